"""The command line's options, generated: one option per ``TrainConfig`` setting, with the help, choices and
default the setting carries, so a new setting is an option everywhere that trains (``train``, ``compare``) without
writing it twice. A usage mistake is one line (``convae CMD: error: ...``) and exit code 2."""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..config import TrainConfig, option_name, parse_model_options, settings_fields
from ..errors import EXIT_BAD_INPUT

PARSED = {"int": int, "float": float, "str": str}
# Checked by TrainConfig.validate against the models registered when it runs (plug-ins included), whose message
# points at `convae models`.
CHECKED_LATER = {"model"}


def speaks() -> bool:
    """Under torchrun every rank meets the same usage or input error; rank 0 alone says it."""
    return os.environ.get("RANK", "0") == "0"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (``convae train: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n" if speaks() else None)


def add_settings(parser: argparse.ArgumentParser, *, exclude: frozenset | set = frozenset(),
                 defaults: dict | None = None) -> None:
    """An option for each setting but those in ``exclude``. Every option's default is None, so that what the user
    typed can be told from what they left out (it overrides a preset, a resumed run's own value, or ``defaults``);
    the help shows the default that applies (the setting's, or ``defaults``')."""
    defaults = defaults or {}
    for f in settings_fields():
        if f.name in exclude:
            continue
        meta, default = f.metadata, defaults.get(f.name, f.default)
        shown = "" if default is None or isinstance(default, bool) else f" (default {default})"
        kind = f.type.split("|")[0].strip()
        if kind == "dict":  # --model-option KEY=VALUE, repeatable
            parser.add_argument(option_name(f.name), dest=f.name, action="append", default=None,
                                metavar=meta["metavar"], help=meta["help"])
            continue
        if kind == "bool":
            parser.add_argument(option_name(f.name), dest=f.name, default=None, help=meta["help"] + shown,
                                action="store_false" if f.default is True else "store_true")
            continue
        choices = None if f.name in CHECKED_LATER else meta["choices"]
        listed = ""
        if f.name == "model":
            from ..models.registry import model_names

            listed = f" ({', '.join(model_names())})"
        parser.add_argument(option_name(f.name), dest=f.name, type=PARSED[kind], choices=choices, default=None,
                            metavar=meta["metavar"], help=meta["help"] + listed + shown)


def given_settings(args: argparse.Namespace) -> dict:
    """The settings the user typed (options left out are None)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if v is not None and k in names}
    if "model_options" in given:
        given["model_options"] = parse_model_options(given["model_options"])
    return given


def summary_asked(what: list[str], command: str) -> str | None:
    """``convae COMMAND summary DIR``: DIR; None where no summary is asked for; a one-line error for anything else."""
    if not what:
        return None
    if what[0] != "summary" or len(what) != 2:
        from ..errors import ConfigError

        raise ConfigError(f"{' '.join(what)}: did you mean `convae {command} summary DIR`?")
    return what[1]


def shared_settings(args: argparse.Namespace) -> dict:
    """What every member of a sweep (or trial of a search) shares: --preset's recipe, then the options typed (the
    folder is the command's own)."""
    from ..config import with_preset

    base = with_preset(args.preset, given_settings(args))
    base.pop("out", None)
    return base
