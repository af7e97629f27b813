"""``convae train``: its options (generated from the settings, plus --preset, --resume, --auto-resume) and the
command, which under torchrun runs on every rank."""

from __future__ import annotations

import argparse
import sys

from ..config import PRESETS, TrainConfig, with_preset
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, ConfigError, NonFiniteLoss, TrainingInterrupted
from .flags import add_settings, given_settings


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a VAE (default: the seed's experiment)",
                       description="Train a VAE. The defaults reproduce the seed: model 'seed', batch 32, Adam 1e-3, "
                                   "100 epochs on the embedded MNIST resized to 32x32. Options left out keep their "
                                   "defaults, or with --resume the run's own settings.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe: " + "; ".join(
        f"{k} = {v}" for k, v in PRESETS.items()))
    add_settings(p)
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint if it has one, else start it there "
                        "(for torchrun --max-restarts and re-queued jobs: the same command every time)")
    p.set_defaults(handler=cmd_train)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's settings and whether it resumes (``--resume``, or ``--auto-resume`` where ``--out`` holds a
    checkpoint): then the options and preset given must ask for the run's own values, or be resumable ones."""
    from ..runs import RunDir, resumed_config

    given = given_settings(args)
    if args.auto_resume:
        if args.resume or not args.out:
            raise ConfigError("--auto-resume: needs --out DIR (the run to continue or start) and no --resume")
        if RunDir(args.out).checkpoint_files():
            return resumed_config(RunDir(args.out), given, args.preset, PRESETS), True
    if args.resume:
        return resumed_config(RunDir(args.resume), given, args.preset, PRESETS), True
    return TrainConfig(**with_preset(args.preset, given)), False


def program_as_invoked() -> str:
    """convae as the user started it, for a command they can paste: ``.venv/bin/convae`` (the script's path as
    run), ``python3 -m convae``, or under torchrun ``torchrun --nproc-per-node N -m convae``."""
    import os
    import shlex

    if "TORCHELASTIC_RUN_ID" in os.environ:  # a worker of torchrun: the user resumes through torchrun again
        local, world = os.environ.get("LOCAL_WORLD_SIZE", "1"), os.environ.get("WORLD_SIZE", "1")
        nodes = "" if local == world else " --nnodes ... (as started)"
        return f"torchrun{nodes} --nproc-per-node {local} -m convae"
    if sys.argv and sys.argv[0].endswith("__main__.py"):
        python = (getattr(sys, "orig_argv", None) or [sys.executable])[0]
        return f"{shlex.quote(python)} -m convae"
    return shlex.quote(sys.argv[0]) if sys.argv and sys.argv[0] else "convae"


def cmd_train(args: argparse.Namespace) -> int:
    from ..faults import first_line
    from ..runtime import Runtime, is_peer_failure
    from ..training import train

    runtime = Runtime.from_environment(args.dist_timeout or TrainConfig.dist_timeout)
    try:
        # rank 0 alone reads the run folder (other nodes need not see it) and tells the others what it found
        found, error = None, None
        if runtime.is_writer:
            try:
                found = config_from_args(args)
            except ConfigError as e:
                error = e
        runtime.agree_on_errors(error)
        config, resume = runtime.broadcast(found)
        try:
            result = train(config, resume=resume, auto_resume=args.auto_resume, argv=sys.argv, runtime=runtime,
                           hooks=args.hooks, program=program_as_invoked())
        except TrainingInterrupted as e:
            if runtime.is_writer:
                print(f"convae: {e}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except NonFiniteLoss as e:
            if runtime.is_writer:
                print(f"convae: error: {e}", file=sys.stderr)
            return EXIT_FAILED
        except RuntimeError as e:
            if not (runtime.distributed and is_peer_failure(e)):
                raise
            print(f"convae train: error: rank {runtime.rank}: lost a peer of the process group ({first_line(e)}); "
                  f"the newest checkpoint in {config.out} is kept (torchrun --max-restarts and --auto-resume "
                  "continue from it)", file=sys.stderr)
            return EXIT_FAILED
        if runtime.is_writer:
            print(f"done: {result.run_dir}")
        return 0
    finally:
        runtime.close()
