"""The quality runs of issue 10 on one GPU, as one prepared script that fits a time budget.

    OUT=gpu_out python benchmarks/gpu_quality.py --budget 540

Four trainings share the GPU at once (measured on an H200: each kept about a quarter of its solo speed, so
`--only pixel --share 1` trains one alone at full speed):

  seed100    the seed protocol in full: --preset seed, 100 epochs (gray 32x32, batch 32)
  resize100  the same recipe with --model resize
  resnet     binarized MNIST, one stochastic layer, residual encoder/decoder
  pixel      binarized MNIST, residual encoder, residual decoder + PixelCNN head

The two binarized models' epochs are sized from a short `convae bench` of each, so that training ends in
``--train-seconds``; then each run is evaluated (test -ELBO, Fréchet distance, IW bound with K = 1000, and for the
pixel model K = 5000 while time is left). Everything small comes back in $OUT/results.tar.gz; a summary in
$OUT/summary.json. Every phase has a deadline: what does not finish in time is stopped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import shutil
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path(os.environ.get("OUT", "gpu_out"))  # what comes back: summary.json, driver.log, results.tar.gz
WORK = Path(os.environ.get("WORK", "/tmp/convae_quality"))  # everything else; its small files are packed at the end
RUNS = WORK / "runs"
STARTED = time.monotonic()
TRAIN_IMAGES = 60_000
DEVICE = "cuda"
SMOKE: list[str] = []  # --smoke: a few images on the CPU, to check this script before it spends GPU time
K = {"low": 1000, "high": 5000}

BINARIZED = ["--binarize", "dynamic", "--batch-size", "128", "--lr", "1e-3", "--lr-schedule", "onecycle",
             "--warmup-fraction", "0.05", "--ema", "0.999", "--precision", "bf16"]
RECIPES = {
    "seed100": ["--preset", "seed", "--epochs", "100"],
    "resize100": ["--preset", "seed", "--model", "resize", "--epochs", "100"],
    "resnet": ["--model", "resnet", *BINARIZED],
    "pixel": ["--model", "pixel", *BINARIZED],
}


def log(message: str) -> None:
    line = f"[{time.monotonic() - STARTED:6.1f} s] {message}"
    print(line, flush=True)
    with open(WORK / "driver.log", "a") as f:
        f.write(line + "\n")


def convae(*args: str) -> list[str]:
    return [sys.executable, "-m", "convae", *args]


def probe(model: str) -> float:
    """Training images per second of ``model`` alone at batch 128, bf16 (a short bench)."""
    if SMOKE:
        return 2000.0
    result = subprocess.run(convae("bench", "--model", model, "--batch-size", "128", "--precision", "bf16",
                                   "--device", DEVICE, "--steps", "20", "--rounds", "2", "--warmup", "5", "--json"),
                            capture_output=True, text=True, timeout=120)
    rows = json.loads(result.stdout)["rows"]
    return rows[0]["img_per_s"]


def start(name: str, extra: list[str]) -> subprocess.Popen:
    log_file = open(WORK / f"{name}_train.txt", "w")
    command = convae("train", *RECIPES[name], *extra, *SMOKE, "--device", DEVICE, "--out", str(RUNS / name), "--quiet",
                     "--no-report", "--checkpoint-minutes", "1")
    log(f"start {name}: {' '.join(command[2:])}")
    return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)


def evaluate(name: str, k: int, deadline: float, frechet: bool = True) -> dict | None:
    left = deadline - (time.monotonic() - STARTED)
    if left < 20:
        log(f"eval {name} K={k}: skipped, {left:.0f} s left")
        return None
    command = convae("eval", str(RUNS / name), "--device", DEVICE, "--json", "--iw-samples", str(k),
                     *(["--frechet"] if frechet and not SMOKE else []), *(["--no-pictures"] if k > K["low"] else []))
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        log(f"eval {name} K={k}: stopped at the deadline after {time.monotonic() - started:.0f} s")
        return None
    if result.returncode:
        log(f"eval {name} K={k}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
        return None
    numbers = json.loads(result.stdout)
    numbers["eval_wall_seconds"] = time.monotonic() - started
    (WORK / f"{name}_eval_k{k}.json").write_text(json.dumps(numbers, indent=2))
    log(f"eval {name} K={k}: -ELBO {numbers['test_neg_elbo']:.2f}, IW {numbers.get('iw_nll', float('nan')):.2f}, "
        f"FD {numbers.get('frechet_distance', float('nan')):.2f} in {numbers['eval_wall_seconds']:.0f} s")
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole script")
    parser.add_argument("--train-seconds", type=float, default=250, help="training time of the binarized models")
    parser.add_argument("--share", type=float, default=0.25,
                        help="the share of its solo speed a model keeps while four train at once (measured on an "
                             "H200: about a quarter)")
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES),
                        help="train and evaluate only these (alone, a model keeps its whole solo speed: use --share 1)")
    parser.add_argument("--epoch-overhead", type=float, default=1.5, help="seconds of evaluation per epoch")
    parser.add_argument("--smoke", action="store_true", help="a tiny CPU run of this script")
    args = parser.parse_args()
    if args.smoke:
        global DEVICE
        DEVICE = "cpu"
        SMOKE.extend(["--train-limit", "256", "--test-limit", "100", "--max-steps", "4"])
        K.update(low=10, high=20)
    RUNS.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    try:
        run_all(args, summary)
    finally:
        (WORK / "summary.json").write_text(json.dumps(summary, indent=2))
        with tarfile.open(OUT / "results.tar.gz", "w:gz") as tar:
            for path in sorted(WORK.rglob("*")):
                parts = set(path.relative_to(WORK).parts)
                if path.is_file() and not {"checkpoints", "tb", "images", ".convae-cache"} & parts:
                    tar.add(path, arcname=str(path.relative_to(WORK)))
        for name in ("summary.json", "driver.log"):
            shutil.copy(WORK / name, OUT / name)
        log("done")


def run_all(args: argparse.Namespace, summary: dict) -> None:
    import torch

    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    log(f"torch {torch.__version__}, {device_name}")
    summary.update(device=device_name, torch=torch.__version__, budget=args.budget)

    epochs = {}
    for name in [n for n in ("resnet", "pixel") if n in args.only]:
        rate = probe(name)
        seconds_per_epoch = TRAIN_IMAGES / (args.share * rate) + args.epoch_overhead
        epochs[name] = max(5, int(args.train_seconds / seconds_per_epoch))
        summary[f"{name}_solo_img_per_s"] = rate
        log(f"probe {name}: {rate:.0f} img/s alone (bf16, batch 128) -> {epochs[name]} epochs")
    summary["epochs"] = epochs

    tests = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda",
                              "tests/test_engine.py", "tests/test_training.py"],
                             stdout=open(WORK / "cuda_tests.txt", "w"), stderr=subprocess.STDOUT)
    jobs = {name: start(name, ["--epochs", str(epochs[name])] if name in epochs else []) for name in args.only}
    train_deadline = args.budget - 200
    finished: dict[str, float] = {}
    results: dict[str, dict] = {}
    while len(finished) < len(jobs):
        now = time.monotonic() - STARTED
        for name, job in jobs.items():
            if name in finished or job.poll() is None:
                continue
            finished[name] = now
            log(f"{name} finished (exit {job.returncode})")
            if name in ("seed100", "resize100"):  # evaluate while the others still train
                results[name] = evaluate(name, K["low"], train_deadline + 60)
        if now > train_deadline:
            for name, job in jobs.items():
                if name not in finished:
                    job.terminate()  # SIGTERM: convae writes a checkpoint and exits 130
                    job.wait(60)
                    finished[name] = now
                    log(f"{name} stopped at the training deadline (checkpoint kept)")
        time.sleep(2)
    summary["train_finished_s"] = finished
    try:
        tests.wait(timeout=30)
        log("CUDA tests: " + (WORK / "cuda_tests.txt").read_text().strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError):
        tests.kill()
        log("CUDA tests: did not finish")

    with ThreadPoolExecutor(2) as pool:  # the two binarized models' K = 1000 evaluations side by side
        futures = {name: pool.submit(evaluate, name, K["low"], args.budget - 60)
                   for name in ("resnet", "pixel") if name in args.only}
        results.update({name: f.result() for name, f in futures.items()})
    pixel = results.get("pixel")
    left = args.budget - 15 - (time.monotonic() - STARTED)
    if pixel and 5 * pixel["eval_wall_seconds"] < left:  # K = 5000 costs about 5x K = 1000
        results["pixel_k5000"] = evaluate("pixel", K["high"], args.budget - 15, frechet=False)
    else:
        log(f"pixel K=5000: not started, {left:.0f} s left and K=1000 took "
            f"{pixel['eval_wall_seconds'] if pixel else float('nan'):.0f} s")
    summary["results"] = results


if __name__ == "__main__":
    main()
