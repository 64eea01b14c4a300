"""Flag parsing of train_ddp.py: per-network learning rates and what --lr means for them."""

from __future__ import annotations

import pytest

from gan.config import FLAG_GROUPS, LR_DISCRIMINATOR, LR_GENERATOR, TrainConfig, parse_config


def test_learning_rates_default_to_the_measured_ones():
    config = parse_config([])
    assert (config.lr, config.lr_generator, config.lr_discriminator) == (None, LR_GENERATOR, LR_DISCRIMINATOR)


def test_lr_sets_both_networks_unless_one_is_given():
    config = parse_config(["--lr", "1e-3"])
    assert (config.lr_generator, config.lr_discriminator) == (1e-3, 1e-3)
    config = parse_config(["--lr", "1e-3", "--lr-discriminator", "5e-5"])
    assert (config.lr_generator, config.lr_discriminator) == (1e-3, 5e-5)


def test_each_bad_rate_is_reported_once(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--lr", "0", "--lr-generator", "-1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--lr must be positive, got 0.0" in err
    assert "--lr-generator must be positive, got -1.0" in err
    assert "--lr-discriminator must" not in err  # it inherits --lr's value: one message is enough


def test_help_shows_defaults_but_not_none(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    out = capsys.readouterr().out
    assert "(default: None)" not in out
    epochs_help = out[out.find("\n  --epochs ") :].split("\n  -")[1]  # the flag's own help line(s)
    assert f"(default: {TrainConfig().epochs})" in " ".join(epochs_help.split())


def test_help_lists_the_flags_in_groups(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    out = capsys.readouterr().out
    titles = [f"\n{title}:\n" for title in FLAG_GROUPS.values()]
    positions = [out.find(title) for title in titles]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), out
    data_section = out[positions[0] : positions[1]]
    assert "--data-dir" in data_section and "--lr" not in data_section
    resume_section = out[out.find("\ncheckpoints and resume:\n") :]
    assert "--resume" in resume_section.split("\n\n")[0]
