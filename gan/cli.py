"""Command-line plumbing shared by every command: dataclass fields as flags, grouped help, validation in one go."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any


def flag_name(field_name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


def at_least_one(values: dict[str, int | float]) -> list[str]:
    """A problem sentence for each named value under 1 (names are field names, reported as flags)."""
    return [f"{flag_name(name)} must be at least 1, got {value}" for name, value in values.items() if value < 1]


def field_flag(help: str, group: str | None = None, **argparse_kwargs: Any) -> dict[str, Any]:
    """A dataclass field's metadata: its help text, its --help group, and any argparse options."""
    return {"help": help, "group": group, **argparse_kwargs}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = (),
                        groups: dict[str, str] | None = None) -> None:
    """One flag per dataclass field (``--kebab-case``, help and choices from the field's metadata).

    Booleans become switches unless the metadata names an action; ``int``/``float`` annotations (also
    ``int | None``) set the type; names in ``positional`` become optional positional arguments. ``groups`` maps
    a group key (a field's ``group`` metadata) to its --help title, in the order --help lists them.
    """
    sections = {key: parser.add_argument_group(title) for key, title in (groups or {}).items()}
    for spec in dataclasses.fields(cls):
        if "help" not in spec.metadata:  # not a flag (e.g. a record of the command line)
            continue
        kwargs = dict(spec.metadata)
        target = sections.get(kwargs.pop("group", None), parser)
        if spec.name in positional:
            target.add_argument(spec.name, nargs="?", default=spec.default, metavar=spec.name.upper(), **kwargs)
            continue
        if spec.type in ("bool", bool) and "action" not in kwargs:
            kwargs["action"] = "store_true"
        elif "action" not in kwargs:
            base_type = str(spec.type).split("|")[0].strip()  # "int | None" -> "int"
            kwargs["type"] = {"int": int, "float": float}.get(base_type, str)
            kwargs["metavar"] = spec.name.upper()
        target.add_argument(flag_name(spec.name), dest=spec.name, default=spec.default, **kwargs)


def exit_with_problems(parser: argparse.ArgumentParser, problems: list[str]) -> None:
    """If there are problems, print the usage and every problem, then exit with status 2."""
    if problems and os.environ.get("LOCAL_RANK", "0") != "0":
        parser.exit(2)  # every process of a launch finds the same problems: the first one of each machine says them
    if problems:
        parser.print_usage(sys.stderr)
        listing = "\n".join(f"  - {p}" for p in problems)
        parser.exit(2, f"{parser.prog}: error: invalid arguments:\n{listing}\n")


def parse_validated(parser: argparse.ArgumentParser, cls: type, argv: list[str] | None = None):
    """Parse into ``cls``; if its ``problems()`` lists any, print them all and exit with status 2."""
    config = cls(**vars(parser.parse_args(argv)))
    exit_with_problems(parser, config.problems())
    return config


def given_fields(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> frozenset[str]:
    """The fields the command line sets explicitly, whatever the value (a flag repeating its default counts)."""
    defaults = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in defaults:
            action.default = argparse.SUPPRESS  # unset flags then leave no attribute at all
        return frozenset(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults:
            action.default = default


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where it is None (the help text then says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)
