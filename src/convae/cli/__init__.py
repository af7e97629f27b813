"""The ``convae`` command line. ``main`` parses, runs one command and turns every expected fault into one line and
its exit code (``convae.errors``); ``convae.__main__.run`` is the program around it. Each command lives in its own
module and imports torch only when it runs, so ``convae --help`` answers at once, and a Ctrl-C at any moment
(torch's import included) is one line and exit 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from ..version import __version__
from ..allocator import keep_freed_memory
from ..errors import EXIT_BAD_INPUT, EXIT_FILESYSTEM, EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY, ConvaeError
from ..faults import debug, describe_os_error, first_line, is_out_of_memory
from ..signals import interrupted_line, interrupts_deferred_during_imports
from . import compare, evaluate, explore, info, sweep, train, tune, use
from ..models.registry import PluginChanged, load_plugin
from .flags import OneLineParser, speaks


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="convae", description="Convolutional variational autoencoders on images. "
                           "`convae train` reproduces the seed tutorial's experiment on the embedded MNIST.")
    parser.add_argument("--version", action="version", version=f"convae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    train.add_parser(sub)
    info.add_parsers(sub)
    evaluate.add_parsers(sub)
    use.add_parsers(sub)
    compare.add_parser(sub)
    sweep.add_parser(sub)
    tune.add_parser(sub)
    explore.add_parser(sub)
    for command in set(sub.choices.values()):  # every command (and its own sub-commands) takes --plugin
        add_plugin_option(command)
    return parser


def add_plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", metavar="MODULE", default=None,
                        help="import MODULE first (a module name, or a path to a .py file): it registers models of "
                             "your own with @convae.register_model (repeatable; docs/own-model.md)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                add_plugin_option(child)


def plugins_named(argv: list[str]) -> list[str]:
    """The modules ``--plugin`` names in ``argv``, read before the parser is built so that ``--help`` and the
    model choices list their models."""
    named = []
    for k, arg in enumerate(argv):
        if arg == "--plugin" and k + 1 < len(argv):
            named.append(argv[k + 1])
        elif arg.startswith("--plugin="):
            named.append(arg.split("=", 1)[1])
    return named


def main(argv: list[str] | None = None, hooks=None) -> int:
    """Run one ``convae`` command; ``hooks`` (``convae.training.Hooks``) reach a training run it starts."""
    args = argparse.Namespace(command=None)
    warnings.showwarning = _one_line_warnings(warnings.showwarning)
    try:
        with interrupts_deferred_during_imports():
            for spec in plugins_named(sys.argv[1:] if argv is None else argv):
                load_plugin(spec)
            parser = build_parser()
            args, unknown = parser.parse_known_args(argv)
            if unknown:
                _unrecognized(parser, args, unknown)
            if not getattr(args, "handler", None):
                parser.print_help()
                return EXIT_BAD_INPUT
            args.hooks = hooks
            keep_freed_memory()  # every command's tensors: freed memory reused, not handed back (allocator.py)
            code = args.handler(args)
            sys.stdout.flush()  # a full disk or a closed pipe behind stdout shows here, not at exit
            return code
    except KeyboardInterrupt:  # Ctrl-C outside training's own handler (starting up, loading data, evaluating)
        if speaks():
            print(interrupted_line(sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConvaeError as e:
        return _fault(args, str(e), e.exit_code, every_rank=e.every_rank)
    except OSError as e:  # a write anywhere outside training's own handling (eval, report, bench, stdout)
        return _fault(args, describe_os_error(e), EXIT_FILESYSTEM)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        return _fault(args, f"out of memory ({first_line(e)}); try a smaller --batch-size, --eval-batch-size, "
                            "--iw-samples or --image-size", EXIT_OUT_OF_MEMORY)


def _one_line_warnings(show):
    """convae's own warnings (a run's plug-in whose code changed) as one line on stderr; others as Python shows them."""
    if getattr(show, "convae", False):
        return show

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PluginChanged):
            if speaks():
                print(f"convae: warning: {message}", file=sys.stderr)
            return
        show(message, category, filename, lineno, file, line)

    showwarning.convae = True
    return showwarning


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> None:
    """argparse's "unrecognized arguments", said by the subcommand, with the nearest option it has."""
    import difflib

    command = getattr(args, "command", None)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    target = sub.choices.get(command, parser) if (sub and command) else parser
    options = [o for a in target._actions for o in a.option_strings]
    hint = ""
    flag = next((u.split("=")[0] for u in unknown if u.startswith("-")), None)
    if flag:
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
    target.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _fault(args: argparse.Namespace, message: str, code: int, every_rank: bool = False) -> int:
    """One line on stderr for an expected fault (the traceback too under CONVAE_DEBUG=1), and its exit code."""
    if debug():
        traceback.print_exc()
    if speaks() or every_rank:
        try:
            print(f"convae{' ' + args.command if args.command else ''}: error: {message}", file=sys.stderr)
        except OSError:
            pass
    if code == EXIT_FILESYSTEM:
        _silence_stdout()
    return code


def _silence_stdout() -> None:
    """stdout could not be written (e.g. > /dev/full): point it at /dev/null so Python's exit does not try again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
