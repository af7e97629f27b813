"""``convae sweep``: seeds and a grid of settings, trained as packs; ``convae sweep summary DIR``: its table."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..config import PRESETS
from ..errors import EXIT_INTERRUPTED, ConfigError, TrainingInterrupted
from .flags import add_settings, shared_settings, summary_asked


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="many runs at once: seeds and settings on a grid, packed onto one device",
                       description="Train every combination of the --grid values, each with --seeds seeds, as "
                                   "ordinary run folders under DIR/runs/; members of one architecture train together "
                                   "(one set of batched kernels per step). `convae sweep summary DIR` prints the table "
                                   "of a sweep: mean ± std over seeds per setting. The same command continues a "
                                   "killed sweep.")
    p.add_argument("what", nargs="*", metavar="summary DIR", help="`summary DIR`: the table of the sweep in DIR")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe for every member (as convae train)")
    add_settings(p, exclude={"out"})
    p.add_argument("--out", metavar="DIR", help="the sweep's folder: sweep.json (the plan), runs/ (the members), "
                                                "summary.md, report.html")
    p.add_argument("--seeds", type=int, default=1, help="seeds per setting, counting up from --seed (default 1)")
    p.add_argument("--grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                   help="a setting and the values members take (any convae train setting, e.g. beta=0.5,1,2 "
                        "lr=1e-3,2e-3); several: every combination")
    p.add_argument("--pack", type=int, metavar="N", help="members per pack (default: measured, the smallest pack "
                                                        "within 5 %% of the best images per second)")
    p.add_argument("--pack-by", choices=("batched", "threads"),
                   help="how a pack steps: one set of batched kernels for all members (what a GPU wants), or the "
                        "members side by side on the CPU's cores (default: measured, with the size)")
    p.add_argument("--shard", metavar="i/n", help="run only the i-th of n slices of the members (a job array)")
    p.add_argument("--eval", action="store_true", help="then run convae eval on the members that lack it")
    p.add_argument("--iw-samples", type=int, default=0, metavar="K", help="with --eval: also the IW bound with K "
                                                                          "samples")
    p.add_argument("--json", action="store_true", help="summary: print the table as JSON")
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiments.sweep import format_summary, write_summary

    folder = summary_asked(args.what, "sweep")
    if folder:
        summary = write_summary(folder)
        if args.json:
            print(json.dumps({**summary, "rows": [{k: v for k, v in r.items() if k != "curves"}
                                                  for r in summary["rows"]]}, indent=2))
        else:
            print(format_summary(summary))
            print(f"\n{Path(folder) / 'summary.md'}, {Path(folder) / 'report.html'}")
        return 0
    return run(args)


def resume_command(argv: list[str], command: str = "sweep") -> str | None:
    """The command that continues an interrupted sweep (or search), written as the user started convae
    (``.venv/bin/convae``, ``python3 -m convae``), so that it can be pasted; None where convae was not started from a
    command line."""
    from ..experiments.tune import masked
    from .train import program_as_invoked

    if argv[1:2] != [command]:
        return None
    line = " ".join([program_as_invoked(), *(shlex.quote(a) for a in argv[1:])])
    hidden = masked(line)  # a database password is never printed: the user gives it again
    return hidden + (" (with the database password where *** stands)" if hidden != line else "")


def run(args: argparse.Namespace) -> int:
    from ..experiments.sweep import (evaluate_members, format_summary, keep_plan, make_plan, parse_grid, parse_shard,
                                     run_sweep, write_summary)
    from ..runtime import Runtime

    if not args.out:
        raise ConfigError("--out: the sweep's folder is needed (DIR: sweep.json, runs/, summary.md)")
    if args.iw_samples < 0 or (args.iw_samples and not args.eval):
        raise ConfigError("--iw-samples: a number >= 0, and with --eval")
    base = shared_settings(args)
    plan = make_plan(base, parse_grid(args.grid), args.seeds, args.out, args.pack, args.pack_by)
    shard = parse_shard(args.shard)
    runtime = Runtime.from_environment(base.get("dist_timeout", 300.0))
    resume = resume_command(sys.argv)
    try:
        error = None
        if runtime.is_writer:
            try:
                keep_plan(plan, sys.argv)
            except ConfigError as e:
                error = e
        runtime.agree_on_errors(error)
        plan.pack = runtime.broadcast(plan.pack)
        say = print if runtime.is_writer else (lambda line: None)
        say(f"sweep {plan.out}: {len(plan.members)} member(s) ({len(plan.seeds)} seed(s)"
            + "".join(f" x {k} in {', '.join(map(str, v))}" for k, v in plan.grid.items()) + ")"
            + (f", shard {shard[0]} of {shard[1]}" if shard[1] > 1 else "")
            + (f", {runtime.world_size} processes" if runtime.world_size > 1 else ""))
        try:
            outcomes = run_sweep(plan, shard=shard, runtime=runtime, log=print, resume=resume)
        except TrainingInterrupted as e:
            print(f"convae: {e}", file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.eval:
            evaluate_members(plan.out, args.iw_samples, log=print, only=[Path(o.run_dir).name for o in outcomes])
        runtime.barrier()
    finally:
        runtime.close()
    if runtime.is_writer:
        print(format_summary(write_summary(plan.out)))
        print(f"\n{plan.out / 'summary.md'}, {plan.out / 'report.html'}")
    return 0
