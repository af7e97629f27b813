"""The best model two CPU cores train in a given time (issue 41): each candidate recipe trained under
`--time-budget`, then its importance-weighted bound on binarized MNIST, one row per (candidate, budget, seed).

    python benchmarks/cpu_hour.py --candidates cpu-hour fast --minutes 10 30 60            # screen: K = 100, 2,000 images
    python benchmarks/cpu_hour.py --candidates cpu-hour --minutes 60 --protocol k100-all     # K = 100, all 10,000
    python benchmarks/cpu_hour.py --candidates cpu-hour --minutes 60 --seeds 0 1 2 --protocol final  # K = 1000
    python benchmarks/cpu_hour.py --table                                                   # the rows so far, and the plot
    python benchmarks/cpu_hour.py --k-gap docs/data/cpu_hour/cpu-hour-60m-s0    # K = 1000 against K = 100, paired

Each run trains one after the other (never two at once: they would share the cores, and a budget is a time on
this machine), in RUNS/<candidate>-<minutes>m-s<seed> with `--auto-resume`: a killed benchmark run again picks up
where it stopped (the training from its last checkpoint, the bound from the images it had scored, kept in
RUN/eval/iw_kK.json). Evaluation is not in the budget and is timed apart. Each row is written to
docs/data/cpu_hour/<run>-<protocol>.json with the CPU's model name and flags; `--table` prints the frontier (minutes
-> bound per candidate), the mean ± std over seeds where a budget has several, and draws docs/cpu_hour_frontier.png.

The protocols: `screen` (K = 100 on the first 2,000 test images: the same images for every candidate; a bound on
a subset, stated as such: measured, the first 2,000 score about 1 nat lower than all 10,000), `k100-all` (K = 100
on all 10,000: the whole test set, with a K that can only give a higher bound than K = 1000), and `final` (K = 1000
on all 10,000, the literature's). A larger K and more images extend the bounds kept in RUN/eval. The IW bound is computed with
`--iw-precision auto` (bf16 products where the CPU multiplies bfloat16 natively; measured within 0.002 nats of fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev

from convae.benchmarking.bench import cpu_model_and_flags

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "data" / "cpu_hour"
BINARIZED = ["--binarize", "dynamic"]
CANDIDATES = {  # every one on the binarized-MNIST protocol (28x28 padded to 32x32, dynamic binarization)
    "cpu-hour": ["--preset", "cpu-hour"],  # pixel, bf16, batch 64, one cycle
    "cpu-hour-compile": ["--preset", "cpu-hour", "--compile"],  # the same, torch.compile'd (inductor)
    "pixel-fp32": ["--preset", "cpu-hour", "--precision", "fp32"],
    "pixel-b128": ["--preset", "cpu-hour", "--batch-size", "128", "--lr", "2e-3"],
    "fast": ["--preset", "fast", *BINARIZED],  # the fully connected VAE, batch 128
    "fc-b512": ["--preset", "fast", *BINARIZED, "--batch-size", "512", "--lr", "4e-3"],
    "resnet-bf16": ["--model", "resnet", "--precision", "bf16", "--batch-size", "64", "--lr-schedule", "onecycle",
                    *BINARIZED],
    "fc-iwae5": ["--preset", "fast", *BINARIZED, "--iw-train", "5"],
}
PROTOCOLS = {"screen": {"iw_samples": 100, "test_limit": 2000}, "k100-all": {"iw_samples": 100, "test_limit": None},
             "final": {"iw_samples": 1000, "test_limit": None}}


def cpu() -> dict:
    name, flags = cpu_model_and_flags()
    return {"model_name": name, "cores": os.cpu_count(),
            "flags": [f for f in flags if f.startswith(("avx", "amx", "fma"))]}


def convae(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convae", *args], capture_output=True, text=True, check=True)


def train(candidate: str, minutes: float, seed: int, run: Path) -> float:
    """Train (or finish) the run; the wall seconds this call took."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convae", "train", *CANDIDATES[candidate], "--time-budget", f"{minutes:g}m",
                    "--seed", str(seed), "--out", str(run), "--auto-resume", "--quiet", "--no-report"], check=True)
    return time.perf_counter() - started


def evaluate(run: Path, protocol: str) -> tuple[dict, float]:
    """`convae eval`'s JSON under the protocol, and the seconds this call took (a resumed one: only what was left)."""
    p = PROTOCOLS[protocol]
    started = time.perf_counter()
    args = ["eval", str(run), "--iw-samples", str(p["iw_samples"]), "--iw-precision", "auto", "--no-pictures", "--json"]
    if p["test_limit"]:
        args += ["--test-limit", str(p["test_limit"])]
    result = json.loads(convae(*args).stdout)
    return result, time.perf_counter() - started


def row(candidate: str, minutes: float, seed: int, run: Path, protocol: str, result: dict, eval_seconds: float,
        train_wall: float | None) -> dict:
    settings = json.loads((run / "config.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last, config = metrics[-1], settings["config"]
    steps_per_epoch = settings["steps_per_epoch"]
    return {
        "candidate": candidate, "command": ["convae", "train", *CANDIDATES[candidate], "--time-budget", f"{minutes:g}m",
                                            "--seed", str(seed)],
        "minutes": minutes, "seed": seed, "protocol": protocol, **PROTOCOLS[protocol],
        "iw_bound": result["iw_nll"], "iw_std_error": result["iw_nll_std_error"],
        "test_neg_elbo_eval_images": result["test_neg_elbo"], "test_neg_elbo_all": last["test_neg_elbo"],
        "steps": last["step"], "epochs_reached": last["step"] / steps_per_epoch,
        "train_seconds": last["train_seconds"], "share_of_budget": last["train_seconds"] / (60 * minutes),
        "img_per_s": last["step"] * config["batch_size"] / last["train_seconds"],
        "eval_seconds_this_call": eval_seconds, "train_wall_seconds_this_call": train_wall,
        "iw_precision": result.get("iw_precision"),
        "precision": settings.get("precision", config["precision"]), "time_budget_plan": settings.get("time_budget_plan"),
        "cpu": cpu(), "torch": settings.get("environment", {}).get("torch"), "run": str(run),
    }


def table() -> list[dict]:
    rows = [json.loads(p.read_text()) for p in sorted(DATA.glob(f"*-[0-9]*m-s*-*.json"))]
    print(f"{'candidate':<16} {'min':>4} {'seed':>4} {'protocol':<7} {'IW bound':>16} {'-ELBO':>7} {'epochs':>6} "
          f"{'img/s':>6} {'budget':>6} {'eval s':>7}")
    for r in sorted(rows, key=lambda r: (r["candidate"], r["minutes"], r["protocol"], r["seed"])):
        print(f"{r['candidate']:<16} {r['minutes']:>4g} {r['seed']:>4} {r['protocol']:<7} "
              f"{r['iw_bound']:>8.2f} ± {r['iw_std_error']:<5.2f} {r['test_neg_elbo_all']:>7.2f} "
              f"{r['epochs_reached']:>6.2f} {r['img_per_s']:>6.0f} {100 * r['share_of_budget']:>5.1f}% "
              f"{r['eval_seconds_this_call']:>7.0f}")
    for (candidate, minutes, protocol), mine in sorted(seed_groups(rows).items()):
        bounds, elbos = [r["iw_bound"] for r in mine], [r["test_neg_elbo_all"] for r in mine]
        print(f"{candidate:<16} {minutes:>4g} {len(mine):>3}s {protocol:<7} {mean(bounds):>8.2f} ± {stdev(bounds):<5.2f} "
              f"{mean(elbos):>7.2f} ± {stdev(elbos):.2f}   mean ± std over seeds {', '.join(str(r['seed']) for r in mine)}")
    return rows


def seed_groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The rows of each (candidate, minutes, protocol) measured with more than one seed, by seed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["candidate"], r["minutes"], r["protocol"]), []).append(r)
    return {key: sorted(mine, key=lambda r: r["seed"]) for key, mine in groups.items() if len(mine) > 1}


def k_gap(run: Path, small: str = "iw_k100_bf16.json", large: str = "iw_k1000_bf16_partial.json") -> None:
    """How much K = 1000 lowers each image's bound below K = 100, paired on the images the larger K has done so far
    (the kept per-image bounds of one run: RUN/eval/iw_kK*.json, or their copies in docs/data), and what that gap
    makes of the K = 100 bound on all the images: an estimate while the K = 1000 evaluation is unfinished."""
    few, many = (json.loads((run / name).read_text())["bounds"] for name in (small, large))
    n, error = len(many), lambda v: stdev(v) / len(v) ** 0.5
    gaps = [b - a for a, b in zip(many, few)]  # -log p(x) bounds are minus the kept log p(x) bounds
    print(f"{run.name}: the first {n:,} images: K = 1000 {-mean(many):.2f} ± {error(many):.2f}, K = 100 "
          f"{-mean(few[:n]):.2f} ± {error(few[:n]):.2f}, K = 1000 minus K = 100 {mean(gaps):.3f} ± {error(gaps):.3f} "
          f"(paired); K = 100 on all {len(few):,} {-mean(few):.2f} ± {error(few):.2f}, with that change: about "
          f"{-mean(few) + mean(gaps):.2f} at K = 1000")


def plot(rows: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.5))
    label = "each run's test -ELBO after each epoch (its schedule over its own budget)"
    for name in sorted({f"{r['candidate']}-{r['minutes']:g}m-s{r['seed']}" for r in rows}):
        kept = DATA / name / "metrics.jsonl"  # the run's metrics as kept in docs/data, else the run's own
        run = next(Path(r["run"]) for r in rows if f"{r['candidate']}-{r['minutes']:g}m-s{r['seed']}" == name)
        source = kept if kept.is_file() else run / "metrics.jsonl"
        if source.is_file():
            epochs = [json.loads(line) for line in source.read_text().splitlines()]
            ax.plot([e["train_seconds"] / 60 for e in epochs], [e["test_neg_elbo"] for e in epochs], ".-", lw=0.8,
                    color="tab:gray", label=label)
            label = None  # one legend entry for all of them
    for protocol, marker in (("screen", "o"), ("k100-all", "^"), ("final", "s")):
        for candidate in sorted({r["candidate"] for r in rows if r["protocol"] == protocol}):
            mine = sorted((r for r in rows if r["candidate"] == candidate and r["protocol"] == protocol),
                          key=lambda r: r["minutes"])
            ax.errorbar([r["minutes"] for r in mine], [r["iw_bound"] for r in mine],
                        yerr=[r["iw_std_error"] for r in mine], marker=marker, ms=4, capsize=2,
                        label=f"{candidate}: IW bound, K = {mine[0]['iw_samples']}, "
                              f"{mine[0]['test_limit'] or 10000:,} test images")
    for value, name in ((86.76, "VAE, Burda et al. (3,280 epochs)"), (82.90, "IWAE 2-layer, Burda et al.")):
        ax.axhline(value, color="gray", lw=0.8, ls="--")
        ax.text(0.5, value + 0.2, name, fontsize=7, color="gray")
    ax.set_xlabel("minutes of training (--time-budget)")
    ax.set_ylabel("nats per image")
    ax.set_ylim(78, 100)
    c = rows[0]["cpu"]
    ax.set_title(f"{c['model_name']}, {c['cores']} cores ({' '.join(f for f in c['flags'] if 'bf16' in f or 'amx' in f) or 'no native bf16'})",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "cpu_hour_frontier.png", dpi=120, metadata={"Software": None})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=["cpu-hour"])
    parser.add_argument("--minutes", nargs="+", type=float, default=[10, 30, 60])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="screen",
                        help="screen: K = 100 on the first 2,000 test images; k100-all: K = 100 on all 10,000; final: "
                             "K = 1000 on all 10,000 (the literature's)")
    parser.add_argument("--runs", default="runs/cpu_hour", help="where the run folders go")
    parser.add_argument("--table", action="store_true", help="print the rows written so far and draw the plot")
    parser.add_argument("--k-gap", metavar="RUN", type=Path,
                        help="how much K = 1000 lowers the bound below K = 100 on the images it has done, from the "
                             "per-image bounds kept in RUN (e.g. docs/data/cpu_hour/cpu-hour-60m-s0)")
    args = parser.parse_args()
    if args.k_gap:
        return k_gap(args.k_gap)
    if not args.table:
        DATA.mkdir(parents=True, exist_ok=True)
        protocol = args.protocol
        for candidate in args.candidates:
            for minutes in args.minutes:
                for seed in args.seeds:
                    name = f"{candidate}-{minutes:g}m-s{seed}"
                    run = Path(args.runs) / name
                    wall = train(candidate, minutes, seed, run)
                    result, seconds = evaluate(run, protocol)
                    record = row(candidate, minutes, seed, run, protocol, result, seconds, wall)
                    (DATA / f"{name}-{protocol}.json").write_text(json.dumps(record, indent=2))
                    print(f"{name}: IW bound {record['iw_bound']:.2f} ± {record['iw_std_error']:.2f} ({protocol}), "
                          f"-ELBO {record['test_neg_elbo_all']:.2f}, eval {seconds:.0f} s", flush=True)
    rows = table()
    if rows:
        plot(rows)


if __name__ == "__main__":
    main()
