"""How close a packed member is to its solo run (issue 24): the same settings trained alone and in a pack, side by
side, and the largest relative difference of each epoch's figures.

    python benchmarks/packed_exactness.py --preset fast --epochs 2 --members 4 --out /tmp/exact --json-out x.json
    python benchmarks/packed_exactness.py --model seed --train-limit 10000 --epochs 2 --members 2 --pack-by batched

Members differ in seed (and every other one in beta = 0.5), as a sweep's would.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from convae.config import PRESETS, TrainConfig
from convae.data import load_for_config
from convae.runs import RunDir
from convae.runtime import Runtime
from convae.training import train
from convae.training.packed import Pack

FIGURES = ("test_neg_elbo", "test_L_likelihood", "test_L_KL", "L_tot", "train_loss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--pack-by", choices=("batched", "threads"), default="threads")
    parser.add_argument("--out", default="/tmp/packed_exactness")
    parser.add_argument("--json-out")
    args = parser.parse_args()

    base = dict(PRESETS[args.preset]) if args.preset else {}
    base.update({k: v for k, v in (("model", args.model), ("train_limit", args.train_limit)) if v is not None})
    base.update(epochs=args.epochs, device="cpu", quiet=True, report=False, tensorboard=False)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    configs = {way: [TrainConfig(**base, seed=k, beta=0.5 if k % 2 else 1.0, out=str(out / way / str(k))).validate()
                     for k in range(args.members)] for way in ("solo", "packed")}
    data = load_for_config(configs["solo"][0], progress=False).subset(base.get("train_limit"), None)
    started = time.perf_counter()
    Pack(configs["packed"], data=data, runtime=Runtime(), strategy=args.pack_by, log=lambda s: None).run()
    packed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for config in configs["solo"]:
        train(config, data=data, log=lambda s: None)
    solo_seconds = time.perf_counter() - started
    rows = []
    for k in range(args.members):
        solo = RunDir(out / "solo" / str(k)).metrics()
        packed = RunDir(out / "packed" / str(k)).metrics()
        for s, p in zip(solo, packed):
            rows.append({"member": k, "epoch": s["epoch"], **{f: abs(p[f] / s[f] - 1) for f in FIGURES},
                         "solo_test_neg_elbo": s["test_neg_elbo"], "packed_test_neg_elbo": p["test_neg_elbo"]})
    worst = {epoch: max(r[f] for r in rows if r["epoch"] == epoch for f in FIGURES) for epoch in
             sorted({r["epoch"] for r in rows})}
    result = {"settings": base, "members": args.members, "pack_by": args.pack_by, "rows": rows,
              "largest_relative_difference_by_epoch": worst, "seconds": {"packed": packed_seconds,
                                                                          "solo_in_turn": solo_seconds}}
    for r in rows:
        print(f"member {r['member']} epoch {r['epoch']}: test -ELBO packed {r['packed_test_neg_elbo']:.4f} solo "
              f"{r['solo_test_neg_elbo']:.4f} (rel {r['test_neg_elbo']:.1e})")
    print("largest relative difference of any figure, by epoch:", {e: f"{w:.1e}" for e, w in worst.items()})
    print(f"packed {packed_seconds:.0f} s, solo one after another {solo_seconds:.0f} s (with their evaluations)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
