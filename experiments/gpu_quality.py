"""The quality runs of issue 10 on one GPU, as one prepared script that does the next steps of a plan within a
time budget and hands back what it got, so that the plan can span device sessions.

    OUT=gpu_out python experiments/gpu_quality.py --budget 560                          # the first session
    OUT=gpu_out python experiments/gpu_quality.py --budget 560 --carried .gpu/carried   # every later one

The plan, in order of what matters most (binarized MNIST, the protocol of Burda et al. 2016):

  1. train `pixel` (residual encoder, residual decoder + PixelCNN head; the best-model target, below 81 nats)
  2. its IW bound with K = 1000
  3. train `resnet` (one stochastic layer, residual encoder and decoder; the single-layer target, below 83)
  4. its IW bound with K = 1000
  5. `pixel` at K = 5000, the headline protocol: `convae eval` draws only the 4000 samples per image that the
     kept K = 1000 bounds lack
  6. the fused resize convolution against Upsample + Conv2d on this GPU (benchmarks/resize_conv.py)
  7. `pixel` trained twice as long (100 epochs) and its K = 1000 bound: the step towards the aim of 79 nats
     (the 50-epoch run's test -ELBO was still falling, by 0.01 nats per epoch over its last ten, and its training
     loss was no lower than its test loss: under-fitted, not over-fitted). It trains beside step 5, which is why
     step 6, a timing, comes after both.

Each session starts where the last one stopped: runs come back in $OUT as ``NAME_run.tar.part*`` (config, metrics,
the kept IW bounds of every image evaluated so far, and, while a later step still evaluates the run, the newest
checkpoint's weights without the optimizer's state), which the next call takes from ``--carried``. A training stopped
at the deadline comes back with its whole checkpoint and goes on next time, though steps 1 and 3 start one only when
a short probe of the model's speed says it ends in the time left; an IW evaluation stopped at the deadline goes on
next time from its kept bounds. Everything small comes back in $OUT/results.tar.gz, a summary
in $OUT/summary.json.

``--seed-protocol`` instead trains the seed protocol in full (`--preset seed`, 100 epochs, with the seed model
and with `--model resize`, side by side) and evaluates both at K = 1000: the runs of docs/results.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

OUT = Path(os.environ.get("OUT", "gpu_out"))  # what comes back: summary.json, driver.log, results.tar.gz, runs
WORK = Path(os.environ.get("WORK", "/tmp/convae_quality"))  # everything else; its small files are packed at the end
RUNS = WORK / "runs"
STARTED = time.monotonic()
TRAIN_IMAGES = 60_000
TEST_IMAGES = 10_000
DEVICE = "cuda"
SMOKE: list[str] = []  # --smoke: a few images on the CPU, to check this script before it spends GPU time
K = {"low": 1000, "high": 5000}

BINARIZED = ["--binarize", "dynamic", "--batch-size", "128", "--lr", "1e-3", "--lr-schedule", "onecycle",
             "--warmup-fraction", "0.05", "--ema", "0.999", "--precision", "bf16"]
RECIPES = {
    "pixel": ["--model", "pixel", *BINARIZED, "--epochs", "50"],
    "pixel100": ["--model", "pixel", *BINARIZED, "--epochs", "100"],
    "resnet": ["--model", "resnet", *BINARIZED, "--epochs", "100"],
    "seed100": ["--preset", "seed", "--epochs", "100"],
    "resize100": ["--preset", "seed", "--model", "resize", "--epochs", "100"],
}
PLAN = ["pixel", "resnet"]  # trained and evaluated at K = 1000 in this order; then the headline
HEADLINE = "pixel"
LONGER = ["pixel100"]  # trained beside the headline's evaluation, then bounded at K = 1000 like the plan's runs
RUN_NAMES = [*PLAN, *LONGER]
# seconds of the per-epoch evaluation (test -ELBO, the pictures; the pixel model draws its samples pixel by pixel):
# metrics.jsonl's eval_seconds on an H200 alone were 1.1-2.1 (pixel) and 0.2-0.5 (resnet), docs/data/quality_h200_plan
EPOCH_EVAL_SECONDS = {"pixel": 1.5, "resnet": 0.5}
H200_IMG_PER_S = {"pixel": 22_054, "resnet": 35_632}  # training alone, bf16, batch 128 (the probes of that run)
CARRY_PART_BYTES = 15 * 2 ** 20  # the device tool returns files of up to 16 MiB
SLACK = 30  # seconds kept back at the end for packing and carrying


def log(message: str) -> None:
    line = f"[{time.monotonic() - STARTED:6.1f} s] {message}"
    print(line, flush=True)
    with open(WORK / "driver.log", "a") as f:
        f.write(line + "\n")


def elapsed() -> float:
    return time.monotonic() - STARTED


def convae(*args: str) -> list[str]:
    return [sys.executable, "-m", "convae", *args]


def epochs_of(name: str) -> int:
    return int(RECIPES[name][RECIPES[name].index("--epochs") + 1])


def model_of(name: str) -> str:
    return RECIPES[name][RECIPES[name].index("--model") + 1]


def probe(name: str) -> float:
    """Training images per second of recipe ``name``'s model alone at batch 128, bf16 (a short bench); if the bench
    fails, half of what the H200 did (a training that then overruns is stopped at the deadline, goes on next time)."""
    if SMOKE:
        return 2000.0
    model = model_of(name)
    command = convae("bench", "--model", model, "--batch-size", "128", "--precision", "bf16", "--device", DEVICE,
                     "--steps", "20", "--rounds", "2", "--warmup", "5", "--json")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        return json.loads(result.stdout)["rows"][0]["img_per_s"]
    except subprocess.TimeoutExpired:
        log(f"probe {name}: the bench did not finish in 120 s")
    except (ValueError, KeyError, IndexError):
        log(f"probe {name}: the bench failed: {result.stderr.strip()[-300:]}")
    return H200_IMG_PER_S[model] / 2


def trained(name: str) -> bool:
    """Whether RUNS/name finished its last epoch (metrics.jsonl's last record)."""
    from convae.runs import RunDir

    try:
        last = RunDir(RUNS / name).metrics()[-1]
    except (OSError, IndexError, ValueError):
        return False
    return last.get("epoch") == epochs_of(name) and not last.get("partial_epoch")


def start_training(name: str) -> subprocess.Popen:
    """``convae train`` of recipe ``name`` in the background, its output in WORK/name_train.txt: it goes on from the
    run's newest checkpoint if it has one, else starts afresh."""
    from convae.runs import RunDir

    if not RunDir(RUNS / name).checkpoint_files():
        shutil.rmtree(RUNS / name, ignore_errors=True)
    # --no-tensorboard: nothing here would show the 64 samples an epoch draws (the pixel model pixel by pixel)
    command = convae("train", *RECIPES[name], *SMOKE, "--device", DEVICE, "--out", str(RUNS / name), "--auto-resume",
                     "--quiet", "--no-report", "--no-tensorboard", "--checkpoint-minutes", "1")
    log(f"train {name}: {' '.join(command[2:])}")
    return subprocess.Popen(command, stdout=open(WORK / f"{name}_train.txt", "w"), stderr=subprocess.STDOUT)


def finish_training(job: subprocess.Popen, deadline: float) -> None:
    """Wait for ``job``; at ``deadline`` stop it with SIGTERM (convae then writes a checkpoint and exits)."""
    try:
        job.wait(timeout=max(1.0, deadline - elapsed()))
    except subprocess.TimeoutExpired:
        job.send_signal(signal.SIGTERM)
        job.wait(60)


def train(name: str, deadline: float) -> None:
    finish_training(start_training(name), deadline)
    log(f"train {name}: " + ("finished" if trained(name) else "stopped before its last epoch"))


def kept_bounds(name: str, k: int) -> int:
    """How many test images' bounds with K samples RUNS/name/eval/iw_kK.json holds."""
    from convae.runs import RunDir

    return len((RunDir(RUNS / name).read_eval(f"iw_k{k}.json") or {}).get("bounds", []))


def bounded(name: str, k: int) -> bool:
    """Whether RUNS/name's bound with K samples is complete (``evaluate`` writes its result file at the end)."""
    from convae.runs import RunDir

    return RunDir(RUNS / name).eval_file(f"result_k{k}.json").exists()


def evaluate(name: str, k: int, deadline: float, *, frechet: bool = False, pictures: bool = True) -> dict | None:
    """``convae eval RUN --iw-samples K``, stopped at ``deadline``: the bounds done so far stay kept in the run."""
    left = deadline - elapsed()
    if left < 20:
        log(f"eval {name} K={k}: not started, {left:.0f} s left")
        return None
    command = convae("eval", str(RUNS / name), "--device", DEVICE, "--json", "--iw-samples", str(k),
                     *(["--frechet"] if frechet and not SMOKE else []), *([] if pictures else ["--no-pictures"]))
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        log(f"eval {name} K={k}: stopped at the deadline after {time.monotonic() - started:.0f} s, "
            f"{kept_bounds(name, k)} images' bounds kept")
        return None
    if result.returncode:
        log(f"eval {name} K={k}: exit {result.returncode}: {result.stderr.strip()[-500:]}")
        return None
    numbers = json.loads(result.stdout)
    numbers["eval_wall_seconds"] = time.monotonic() - started
    from convae.runs import RunDir

    RunDir(RUNS / name).write_eval(f"result_k{k}.json", numbers)  # carried with the run
    log(f"eval {name} K={k}: -ELBO {numbers['test_neg_elbo']:.2f}, IW {numbers['iw_nll']:.2f} "
        f"+- {numbers['iw_nll_std_error']:.2f}, extended from {numbers['iw_extended_from']}, "
        f"{numbers['iw_images_from_earlier']} images read back, in {numbers['eval_wall_seconds']:.0f} s")
    return numbers


def train_and_bound(name: str, args: argparse.Namespace, summary: dict) -> bool:
    """Train recipe ``name`` if it is not trained yet and the probe says it ends in time, then its K = 1000 bound;
    whether both are done."""
    if not trained(name):  # one cut short earlier goes on from its checkpoint; the estimate is then on the safe side
        if args.budget - SLACK - elapsed() < 60:
            log(f"train {name}: left for the next session")
            return False
        rate = probe(name)
        needed = 1.1 * epochs_of(name) * (TRAIN_IMAGES / rate + EPOCH_EVAL_SECONDS[model_of(name)]) + 20
        summary[f"{name}_probe_img_per_s"] = rate
        log(f"probe {name}: {rate:.0f} img/s alone (bf16, batch 128): {epochs_of(name)} epochs need about "
            f"{needed:.0f} s, {args.budget - SLACK - elapsed():.0f} s left")
        if needed > args.budget - SLACK - elapsed():
            log(f"train {name}: left for the next session")
            return False
        train(name, args.budget - SLACK)
        if not trained(name):
            return False
    if not bounded(name, K["low"]):  # bounds kept by an evaluation cut short are read back, not redrawn
        summary["results"][f"{name}_k{K['low']}"] = evaluate(name, K["low"], args.budget - SLACK)
    return kept_bounds(name, K["low"]) == TEST_IMAGES


def quality_plan(args: argparse.Namespace, summary: dict) -> None:
    summary.setdefault("results", {})
    for name in PLAN:
        if not train_and_bound(name, args, summary):
            return
    # The longer trainings start at once, beside the headline's evaluation (on the H200 the two together took about
    # what they take one after the other). One stopped at the deadline goes on next time from its carried checkpoint
    # (--auto-resume), so no probe has to promise that it ends in time.
    longer = {name: start_training(name) for name in LONGER if not trained(name)}
    if not bounded(HEADLINE, K["high"]):
        summary["results"][f"{HEADLINE}_k{K['high']}"] = evaluate(HEADLINE, K["high"], args.budget - SLACK,
                                                                  pictures=False)
    for name, job in longer.items():
        finish_training(job, args.budget - SLACK)
        log(f"train {name}: " + ("finished" if trained(name) else "stopped before its last epoch"))
    for name in LONGER:
        if trained(name):
            train_and_bound(name, args, summary)  # trained: only its K = 1000 bound, where not done yet
    done = [bounded(HEADLINE, K["high"]), *(bounded(name, K["low"]) for name in LONGER)]
    resize_done = args.carried and (args.carried / "resize_conv.json").exists()
    if all(done) and not resize_done and not SMOKE and args.budget - SLACK - elapsed() >= 90:
        resize_conv_benchmark()  # last, alone on the GPU: it is a timing


def resize_conv_benchmark() -> None:
    """The fused resize convolution against Upsample + Conv2d on this GPU (about half a minute); its JSON comes back
    in $OUT, and copied into the next session's carried folder it says this step is done."""
    try:
        subprocess.run([sys.executable, "benchmarks/resize_conv.py", "--device", DEVICE, "--models", "resnet",
                        "pixel", "--steps", "20", "--iw-images", "16", "--json-out", str(OUT / "resize_conv.json")],
                       stdout=open(WORK / "resize_conv.txt", "w"), stderr=subprocess.STDOUT, timeout=90)
        log("resize_conv: " + " | ".join((WORK / "resize_conv.txt").read_text().strip().splitlines()[1:]))
    except subprocess.TimeoutExpired:
        log("resize_conv: did not finish in 90 s")


def seed_protocol(args: argparse.Namespace, summary: dict) -> None:
    """The seed's recipe for 100 epochs with the seed model and the resize decoder, side by side, then K = 1000."""
    jobs = {name: start_training(name) for name in ("seed100", "resize100")}
    for name, job in jobs.items():
        finish_training(job, args.budget - 200)
        log(f"train {name}: exit {job.returncode}")
    summary["results"] = {name: evaluate(name, K["low"], args.budget - SLACK) for name in jobs}


def needs_weights(name: str) -> bool:
    """Whether a later step of the plan still evaluates RUNS/name: its K = 1000 bound, or the headline's K = 5000."""
    return not bounded(name, K["low"]) or (name == HEADLINE and not bounded(name, K["high"]))


def carry_run(name: str) -> list[str]:
    """RUNS/name's config, metrics and kept evaluations as $OUT/name_run.tar.part0, part1, ..., with its newest
    checkpoint: whole (optimizer and all) for a training cut short, which the next session resumes; for a finished
    one only its weights (the model's and the averaged ones, which is what evaluation reads), and only while a later
    step still evaluates it. Nothing for a training stopped before its first checkpoint: it starts over."""
    from convae.runs import RunDir, load_checkpoint
    from convae.runs.checkpoint import weights_only

    run = RUNS / name
    checkpoints = RunDir(run).checkpoint_files()
    finished = trained(name)
    if not checkpoints and not finished:
        return []
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        for f in [run / "config.json", run / "metrics.jsonl", *sorted((run / "eval").glob("*.json"))]:
            if f.is_file():
                tar.add(f, arcname=str(f.relative_to(RUNS)))
        if checkpoints and not finished:
            for f in (checkpoints[-1], checkpoints[-1].with_suffix(".safetensors")):
                tar.add(f, arcname=str(f.relative_to(RUNS)))
        elif checkpoints and needs_weights(name):  # the device tool sends at most 64 MiB: weights only where needed
            checkpoint_file = checkpoints[-1]
            weights, meta = weights_only(load_checkpoint(checkpoint_file))
            for suffix, blob in ((".safetensors", weights), (".json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{name}/checkpoints/{checkpoint_file.stem}{suffix}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    blob, parts = packed.getvalue(), []
    for i in range(0, len(blob), CARRY_PART_BYTES):
        part = OUT / f"{name}_run.tar.part{i // CARRY_PART_BYTES}"
        part.write_bytes(blob[i:i + CARRY_PART_BYTES])
        parts.append(part.name)
    log(f"carry {name}: {len(blob) / 2 ** 20:.1f} MiB in {len(parts)} part(s): {', '.join(parts)}")
    return parts


def uncarry_runs(folder: Path) -> list[str]:
    """Put back the runs that ``carry_run`` returned (their parts copied into ``folder``)."""
    names = []
    for first in sorted(folder.glob("*_run.tar.part0")):
        name = first.name[: -len("_run.tar.part0")]
        parts = sorted(folder.glob(f"{name}_run.tar.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
        with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
            tar.extractall(RUNS, filter="data")
        names.append(name)
        log(f"carried {name}: put back from {len(parts)} part(s); trained: {trained(name)}, K={K['low']}: "
            f"{kept_bounds(name, K['low'])} images, K={K['high']}: {kept_bounds(name, K['high'])} images")
    return names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=560, help="seconds for the whole script")
    parser.add_argument("--carried", type=Path, metavar="FOLDER",
                        help="a folder holding the *_run.tar.part* files an earlier session returned: go on from them")
    parser.add_argument("--seed-protocol", action="store_true", help="the seed protocol in full instead of the plan")
    parser.add_argument("--smoke", action="store_true", help="a tiny CPU run of this script")
    args = parser.parse_args()
    if args.smoke:
        global DEVICE
        DEVICE = "cpu"
        SMOKE.extend(["--train-limit", "256", "--test-limit", "100", "--max-steps", "4"])
        K.update(low=10, high=20)
        for name in RECIPES:  # 4 steps are one partial epoch: one epoch is the whole smoke training
            RECIPES[name][RECIPES[name].index("--epochs") + 1] = "1"
        globals()["TEST_IMAGES"] = 100
    RUNS.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    import torch

    summary: dict = {"device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                     "torch": torch.__version__, "budget": args.budget}
    log(f"torch {torch.__version__}, {summary['device']}")
    try:
        if args.carried:
            summary["carried_in"] = uncarry_runs(args.carried)
        tests = None if SMOKE else subprocess.Popen(  # the CUDA-only tests, beside the plan (about 15 s)
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda or says_how",
             "tests/test_engine.py", "tests/test_training.py", "tests/test_evaluation.py"],
            stdout=open(WORK / "cuda_tests.txt", "w"), stderr=subprocess.STDOUT)
        if args.seed_protocol:
            seed_protocol(args, summary)
        else:
            quality_plan(args, summary)
        if tests is not None:
            try:
                tests.wait(timeout=30)
                log("CUDA tests: " + (WORK / "cuda_tests.txt").read_text().strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, IndexError):
                tests.kill()
                log("CUDA tests: did not finish")
    finally:
        summary["carried_out"] = {name: carry_run(name) for name in RUN_NAMES if (RUNS / name).is_dir()}
        summary["state"] = {name: {"trained": trained(name),
                                   **{f"k{k}_images": kept_bounds(name, k) for k in K.values()}} for name in RUN_NAMES}
        (WORK / "summary.json").write_text(json.dumps(summary, indent=2))
        with tarfile.open(OUT / "results.tar.gz", "w:gz") as tar:
            for path in sorted(WORK.rglob("*")):
                parts = set(path.relative_to(WORK).parts)
                if path.is_file() and not {"checkpoints", "tb", "images", ".convae-cache"} & parts:
                    tar.add(path, arcname=str(path.relative_to(WORK)))
        shutil.copy(WORK / "summary.json", OUT / "summary.json")
        log("done")


if __name__ == "__main__":
    main()
