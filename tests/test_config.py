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


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--seed", str(2**63)], "--seed must be between 0 and 2**63 - 1"),
        (["--seed", "-1"], "--seed must be between 0 and 2**63 - 1"),
        (["--latent-dim", "100000"], "--latent-dim must be at most 4096"),
        (["--base-width", "100000"], "--base-width must be at most 512"),
        (["--dist-timeout", str(10**12)], "--dist-timeout must be at most"),
        (["--dist-timeout", "0"], "--dist-timeout must be at least 1"),
        (["--split", "test", "--batch-size", "20000"], "--batch-size 20000 is larger than the test split (10000"),
        (["--eval-samples", "3"], "--eval-samples must be at least 4"),
        (["--eval-samples", "39", "--num-classes", "10"], "--eval-samples must be at least 40"),
        (["--eval-samples", "1000000"], "--eval-samples must be at most 100000"),
        (["--lr", "inf"], "--lr must be finite"),
        (["--lr", "nan"], "--lr must be positive, got nan"),
        (["--ema-decay", "nan"], "--ema-decay must be in [0, 1)"),
        (["--run-name", ".."], "--run-name must be a plain folder name"),
    ],
)
def test_out_of_range_values_are_refused_at_parse_time(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_eval_samples_below_k_are_fine_when_evaluation_is_off():
    assert parse_config(["--eval-samples", "3", "--eval-every", "0"]).eval_samples == 3


def test_the_flags_a_command_line_sets_are_known_whatever_their_values():
    config = parse_config(["--seed", "0", "--lr=1e-3", "--no-sync-bn", "--max-st", "5"])  # a default, =, abbreviation
    assert config.given == {"seed", "lr", "sync_bn", "max_steps"}
    assert "given" not in config.to_dict()  # not a setting: config.json does not record it
