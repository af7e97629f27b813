"""``convae tune``: a hyperparameter search on Optuna, trials trained as packs; ``convae tune summary DIR``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import PRESETS
from ..errors import EXIT_INTERRUPTED, ConfigError, TrainingInterrupted
from .flags import add_settings, shared_settings, summary_asked


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="a hyperparameter search on Optuna: trials trained as packs, pruned at epoch ends",
                       description="Search the settings in --space with Optuna (TPE or random sampling, median or "
                                   "Hyperband pruning at epoch ends), each trial an ordinary run folder under "
                                   "DIR/runs/, the study in DIR/study.db (or --storage). The same command continues "
                                   "an interrupted search; --trials counts the study's total. `convae tune summary "
                                   "DIR`: the best trial, the top trials and the parameters' importances.")
    p.add_argument("what", nargs="*", metavar="summary DIR", help="`summary DIR`: the results of the search in DIR")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe for every trial (as convae train)")
    add_settings(p, exclude={"out", "seed"})
    p.add_argument("--out", metavar="DIR", help="the search's folder: study.db, runs/ (the trials), summary.md")
    p.add_argument("--space", action="append", default=[], metavar="KEY=SPEC",
                   help="a setting and its range: low:high (uniform; integers for an integer setting), "
                        "log:low:high (log-uniform) or a,b,c (a choice); any convae train setting, or "
                        "model-option.KEY (repeatable)")
    p.add_argument("--trials", type=int, default=20, help="trials in the study in all (default 20)")
    p.add_argument("--metric", choices=("elbo", "iw"), default="elbo",
                   help="what a trial is judged by: its last test -ELBO (default), or the IW bound (--iw-samples)")
    p.add_argument("--iw-samples", type=int, default=100, metavar="K", help="with --metric iw: K (default 100)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="default tpe")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median", help="default median")
    p.add_argument("--seed", type=int, default=0, help="seeds the search's sampler and every trial (default 0)")
    p.add_argument("--pack", type=int, default=2, help="trials asked at once and trained together (default 2)")
    p.add_argument("--storage", metavar="URL", help="the study's database (default sqlite:///DIR/study.db); any URL "
                                                   "Optuna takes, e.g. postgresql://..., shared by several workers")
    p.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                   help="a worker marks its running trials alive this often; one silent for twice as long is taken "
                        "for dead, and its trials are asked again and resume from their checkpoints (default 60)")
    p.add_argument("--json", action="store_true", help="summary: print it as JSON")
    p.set_defaults(handler=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from ..experiments.tune import format_summary, parse_space, tune, write_summary
    from .sweep import resume_command

    folder = summary_asked(args.what, "tune")
    if folder:
        summary = write_summary(folder, args.storage)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    if not args.out:
        raise ConfigError("--out: the search's folder is needed (DIR: study.db, runs/, summary.md)")
    if not args.space:
        raise ConfigError("--space: give at least one KEY=SPEC to search (e.g. --space lr=log:1e-4:1e-2)")
    base = shared_settings(args)
    space = parse_space(args.space)
    resume = resume_command(sys.argv, "tune")
    try:
        tune(base, space, args.trials, args.out, metric=args.metric, iw_samples=args.iw_samples, sampler=args.sampler,
             pruner=args.pruner, seed=args.seed, storage=args.storage, pack=args.pack, log=print, resume=resume,
             heartbeat=args.heartbeat)
    except TrainingInterrupted as e:
        print(f"convae: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    summary = write_summary(args.out, args.storage)
    print(format_summary(summary))
    print(f"\n{Path(args.out) / 'summary.md'}")
    return 0
