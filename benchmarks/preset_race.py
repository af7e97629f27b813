"""Quality per second: the seed preset against the fast preset on this machine, side by side.

    python benchmarks/preset_race.py --out race            # trains both (10 epochs each), then plots
    python benchmarks/preset_race.py --out race --plot-only

Trains `convae train --preset seed --epochs 10` and then `convae train --preset fast` one after the other (never
at once: they would share the cores), each timed by the wall clock, and draws test -ELBO against seconds
(training plus the per-epoch evaluation, from metrics.jsonl) to race/preset_race.png; numbers in
race/preset_race.json, with the CPU's model name and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from convae.benchmarking.bench import cpu_model_and_flags

PRESETS = {"seed": ["--preset", "seed", "--epochs", "10"], "fast": ["--preset", "fast"]}


def cpu_description() -> dict:
    name, flags = cpu_model_and_flags()
    return {"model_name": name, "flags": [f for f in flags if f.startswith(("avx", "amx", "fma"))]}


def curve(run: Path) -> list[dict]:
    """(seconds, test -ELBO) after each epoch; seconds = training plus evaluation so far."""
    points, seconds = [], 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        seconds += m["epoch_seconds"] + m["eval_seconds"]
        points.append({"epoch": m["epoch"], "seconds": seconds, "test_neg_elbo": m["test_neg_elbo"]})
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="race")
    parser.add_argument("--plot-only", action="store_true", help="draw from the runs already in --out")
    args = parser.parse_args()
    out = Path(args.out)
    walls = {}
    if not args.plot_only:
        out.mkdir(parents=True, exist_ok=True)
        for name, options in PRESETS.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "convae", "train", *options, "--out", str(out / name), "--quiet"],
                           check=True)
            walls[name] = time.perf_counter() - started
    curves = {name: curve(out / name) for name in PRESETS}
    target = curves["seed"][-1]["test_neg_elbo"]
    seed_seconds = curves["seed"][-1]["seconds"]
    reached = next((p for p in curves["fast"] if p["test_neg_elbo"] <= target), None)
    result = {"cpu": cpu_description(), "target_test_neg_elbo": target, "seed_10_epoch_seconds": seed_seconds,
              "fast_reaches_target_at": reached, "curves": curves, "process_wall_seconds": walls or None,
              "ratio": reached["seconds"] / seed_seconds if reached else None}
    (out / "preset_race.json").write_text(json.dumps(result, indent=2))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, points in curves.items():
        ax.plot([p["seconds"] for p in points], [p["test_neg_elbo"] for p in points], "o-", ms=3,
                label=f"--preset {name}")
    ax.axhline(target, color="gray", lw=0.8, ls="--", label=f"seed, 10 epochs: {target:.1f}")
    ax.axvline(seed_seconds / 5, color="gray", lw=0.8, ls=":", label="one fifth of its time")
    ax.set_xlabel("seconds (training + per-epoch evaluation)")
    ax.set_ylabel("test -ELBO, nats per image")
    ax.set_ylim(target - 15, target + 60)
    ax.set_title(f"{result['cpu']['model_name']} ({' '.join(result['cpu']['flags'])}), {os.cpu_count()} CPUs", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "preset_race.png", dpi=120, metadata={"Software": None})
    print(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=2))


if __name__ == "__main__":
    main()
