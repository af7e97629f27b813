"""Issue 33: how fast `resize --encoder conv` trains on colour images of 64, 128 and 256 pixels on this CPU, and how
much memory a 256 x 256 run needs.

Each size trains as `convae train` would (a folder of generated photos, the logistic likelihood, Adam), in a process
of its own: images per second are the median of the run's progress records after its first (steps.jsonl), the
memory is the process's peak resident set (getrusage of the finished child), so the numbers hold everything a run
holds (data cache mapped, model, Adam, activations, the evaluation at the end).

    .venv/bin/python benchmarks/image_sizes.py [--out docs/data/image_sizes.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from convae.benchmarking.bench import cpu_description

SIZES = {64: 32, 128: 16, 256: 8}  # image size -> batch (the batch that fits a laptop's memory comfortably)
STEPS = 60


def run(size: int, batch: int, folder: Path, work: Path) -> dict:
    out = work / f"run{size}"
    command = [sys.executable, "-m", "convae", "train", "--data", str(folder), "--model", "resize", "--encoder", "conv",
               "--likelihood", "logistic", "--image-size", str(size), "--batch-size", str(batch), "--max-steps",
               str(STEPS), "--progress-every", "10", "--test-limit", "64", "--device", "cpu", "--no-report",
               "--no-tensorboard", "--quiet", "--cache-dir", str(work / "cache"), "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(command, check=True, capture_output=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rates = [json.loads(line)["img_per_s"] for line in (out / "steps.jsonl").read_text().splitlines()][1:]
    settings = json.loads((out / "config.json").read_text())
    return {"image_size": size, "batch": batch, "img_per_s": statistics.median(rates), "steps": STEPS,
            "parameters": settings["model_parameters"], "peak_rss_mb": round(peak_kib / 1024, 1),
            "peak_rss_is_the_largest_so_far": peak_kib > before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results as JSON here too")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "photos"
        folder.mkdir()
        for k in range(600):  # 640 x 480 photos, larger than every size: each is cropped and shrunk
            smooth = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(smooth).resize((640, 480), Image.Resampling.BICUBIC).save(folder / f"{k}.png")
        results = [run(size, batch, folder, work) for size, batch in SIZES.items()]  # smallest first: peak RSS grows
    report = {"cpu": cpu_description(), "torch": __import__("torch").__version__, "results": results}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
