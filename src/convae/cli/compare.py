"""``convae compare``: several models trained under one budget (or finished runs), one table and one panel."""

from __future__ import annotations

import argparse
from pathlib import Path

from .flags import add_settings, given_settings

DEFAULTS = {"epochs": 1}  # a comparison is a quick look unless told otherwise


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="train several models under one budget (or take finished runs) and tabulate",
                       description="Train each model with the same settings (any of convae train's; one epoch unless "
                                   "--epochs says otherwise), or take finished runs, then write one table and one "
                                   "panel of pictures.")
    p.add_argument("--models", nargs="+", default=["fc", "seed", "resize", "subpixel"], help="models to train")
    p.add_argument("--runs", nargs="+", help="finished run folders to compare instead of training")
    p.add_argument("--iw-samples", type=int, default=100, help="K of the importance-weighted bound (default 100)")
    p.add_argument("--out", default="runs/compare", help="folder for the runs, the table and the panel")
    add_settings(p, exclude={"model", "out", "quiet"}, defaults=DEFAULTS)
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..experiments.compare import compare

    out = Path(args.out)
    settings = {k: v for k, v in given_settings(args).items() if k != "out"}  # --out is the comparison's folder
    result = compare(args.models, {**DEFAULTS, **settings}, out, runs=args.runs,
                     iw_samples=args.iw_samples, device=args.device or "auto")
    print(result["table"])
    print(f"\ntable: {out / 'compare.md'} (and compare.json); pictures: {out / 'panel.png'}")
    return 0
