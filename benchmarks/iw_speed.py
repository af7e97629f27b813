"""The importance-weighted bound's speed (issue 25): this checkout against an older one, side by side.

For each trained run, the bound with K samples on its first N test images (batches of 100, seed 0: the same images
and noise in every variant), computed in a fresh process per variant and round, the variants alternating:

* ``baseline``: the older checkout (``--baseline-src``, e.g. ``git worktree add /tmp/ad8fd22 ad8fd22``; its src/);
* ``fp32``: this checkout, ``convae eval --iw-precision fp32``;
* ``bf16``: this checkout, the decoder's products in bfloat16 (``--iw-precision bf16``), where the CPU has native
  bfloat16 (AMX or AVX-512 BF16) or ``--bf16`` forces it.

Prints and writes (``--json-out``) the median seconds, (image, sample) pairs per second, each variant's speed-up over
the baseline, its mean bound's difference from the baseline's, and the fraction of this machine's matmul peak the
decoder reaches (its FLOPs per pair counted by torch's FlopCounterMode, over a large matmul's measured rate in the
same dtype, as `convae bench` measures it).

    python benchmarks/iw_speed.py runs/fc runs/resize --k 1000 --images 100 --rounds 3 --baseline-src /tmp/ad8fd22/src

``--device cuda`` times it on the GPU (the matmul rates then are the GPU's; benchmarks/gpu_iw_check.sh runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

CHILD = r"""
import json, sys, time, torch
import convae
from convae.evaluation.likelihood import importance_weighted_nll
try:
    from convae.data import evaluation_images
except ImportError:  # older checkouts kept it beside the ELBO
    from convae.evaluation.elbo import evaluation_images
from convae.data import load_for_config
run, k, n, precision, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
trained = convae.load(run, device=device)
model, config = trained.model, trained.config
data = load_for_config(config, progress=False)
labels = data.test_labels[:n] if model.classes else None
test = evaluation_images(data.test_images[:n], data.levels, config, labels)
options = {} if precision == "baseline" else {"precision": precision}
start = time.perf_counter()
result = importance_weighted_nll(model, test, k, batch_size=100, seed=0, **options)  # its bounds come to the host
print(json.dumps({"seconds": time.perf_counter() - start, "nll": result.nll}))
"""


def run_variant(run: str, k: int, n: int, variant: str, src: str, device: str = "cpu") -> dict:
    env = dict(os.environ, PYTHONPATH=src)
    run = str(Path(run).resolve())
    done = subprocess.run([sys.executable, "-c", CHILD, run, str(k), str(n), variant, device], capture_output=True,
                          text=True, env=env, cwd=Path(run).resolve().parent)
    if done.returncode:
        raise SystemExit(f"{variant} on {run} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def decoder_flops_per_pair(run: str) -> float:
    """FLOPs of one decoder pass per (image, sample) pair, counted by torch for 64 test images' posterior means."""
    from torch.utils.flop_counter import FlopCounterMode

    import convae
    from convae.data import evaluation_images, load_for_config

    trained = convae.load(run, device="cpu")
    model = trained.model.eval()
    data = load_for_config(trained.config, progress=False)
    labels = data.test_labels[:64] if model.classes else None
    x = evaluation_images(data.test_images[:64], data.levels, trained.config, labels).floats(0, 64, torch.float32,
                                                                                              torch.device("cpu"))
    with torch.no_grad():
        z = model.encode(x, labels)[0]
        counter = FlopCounterMode(display=False)
        with counter:
            model.decode(z, x, labels)
    return counter.get_total_flops() / 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="trained run folders")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--images", type=int, default=100, help="the first N test images")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", help="src/ of the older checkout to compare with")
    parser.add_argument("--bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--json-out")
    args = parser.parse_args()

    here = str(Path(__file__).resolve().parents[1] / "src")
    sys.path.insert(0, here)
    from convae.benchmarking.bench import cpu_description, matmul_peak_gflops
    from convae.runtime import native_bf16

    device = torch.device(args.device)
    variants = (["baseline"] if args.baseline_src else []) + ["fp32"]
    if args.bf16 or native_bf16(device):
        variants.append("bf16")
    peak = {p: (matmul_peak_gflops(device.type, p) or float("nan")) * 1e9 for p in ("fp32", "bf16")}
    peak["baseline"] = peak["fp32"]
    cpu = cpu_description()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    report = {"device": where, "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "k": args.k, "images": args.images, "rounds": args.rounds,
              "matmul_gflops": {d: peak[d] / 1e9 for d in ("fp32", "bf16")}, "runs": []}
    print(f"{where}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; large matmul: "
          f"{peak['fp32'] / 1e9:.0f} GFLOP/s fp32, {peak['bf16'] / 1e9:.0f} GFLOP/s bf16")
    for run in args.runs:
        flops = decoder_flops_per_pair(run)
        times = {v: [] for v in variants}
        nll = {}
        for _ in range(args.rounds):
            for variant in variants:
                result = run_variant(run, args.k, args.images, variant,
                                     args.baseline_src if variant == "baseline" else here, args.device)
                times[variant].append(result["seconds"])
                nll[variant] = result["nll"]
        pairs = args.k * args.images
        row = {"run": run, "decoder_mflop_per_pair": flops / 1e6, "variants": {}}
        reference = "baseline" if args.baseline_src else "fp32"
        for variant in variants:
            median = statistics.median(times[variant])
            rate = pairs / median
            row["variants"][variant] = {
                "seconds": times[variant], "median_seconds": median, "pairs_per_second": rate, "nll": nll[variant],
                "speedup": statistics.median(times[reference]) / median,
                "nll_minus_reference": nll[variant] - nll[reference],
                "fraction_of_matmul_peak": rate * flops / peak[variant]}
            v = row["variants"][variant]
            print(f"{run} {variant:8s}: {median:7.2f} s  {rate:9,.0f} pairs/s  {v['speedup']:.2f}x  bound "
                  f"{nll[variant]:.4f} ({v['nll_minus_reference']:+.4f})  {v['fraction_of_matmul_peak']:.0%} of "
                  f"the {'bf16' if variant == 'bf16' else 'fp32'} matmul rate")
        report["runs"].append(row)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
