"""``convae bench``: time training steps on every device present and put CPU and GPU side by side.

What is timed: the training step exactly as ``convae train`` runs it (gather a batch from uint8 images resident
on the device, forward, loss, backward, Adam), after warm-up steps (which absorb torch.compile and CUDA-graph
capture, reported separately), in several rounds of several steps, each round ended by a device sync. We report
the median round. FLOPs come from the model's layers (``flops.py``); the peak is a matmul this command times
itself on the same device and precision: the fastest of its timings before and after the steps (a peak is the best
the machine does; on a shared machine a single timing can fall to half of it, and a share of a low "peak" read
118 % here).
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..models import build_model
from ..runtime import native_bf16, synchronize
from ..training.engine import make_optimizer, make_train_step
from .flops import train_flops_per_image

SEED_EPOCH_IMAGES = 60_000  # 1,875 steps of 32
SEED_EPOCHS = 100


@dataclass
class BenchSettings:
    model: str = "seed"
    batch_sizes: tuple[int, ...] = (32,)
    precisions: tuple[str, ...] = ("fp32",)
    devices: tuple[str, ...] | None = None  # None: cpu and every accelerator present
    steps: int = 50
    rounds: int = 5
    warmup: int = 10
    compile: bool = False
    cuda_graphs: bool = True


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    if device == "cpu":
        return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return device


CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what decides speed and rounding


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """lscpu's model name and flags (the platform's processor name, no flags, where lscpu is missing)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        lines = []
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}
    return info.get("Model name") or platform.processor() or platform.machine(), info.get("Flags", "").split()


def cpu_description() -> str:
    """The CPU as figures should name it: "Model name (avx2 avx512f ...)"."""
    name, flags = cpu_model_and_flags()
    shown = [f for f in CPU_FLAGS_SHOWN if f in flags]
    return f"{name} ({' '.join(shown)})" if shown else name


def matmul_peak_gflops(device: str, precision: str, repeats: int = 5) -> float | None:
    """Measured GFLOP/s of a large square matmul (2048 on CPU, 8192 on accelerators), the fastest of ``repeats``;
    None if not native."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if precision == "bf16" and not native_bf16(torch.device(device)):
        return None
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        synchronize(torch.device(device))
        started = time.perf_counter()
        a @ b
        synchronize(torch.device(device))
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / min(times) / 1e9


def time_train_steps(settings: BenchSettings, device: str, batch: int, precision: str) -> dict:
    dev = torch.device(device)
    config = TrainConfig(model=settings.model, batch_size=batch, precision=precision, device=device,
                         compile=settings.compile, cuda_graphs=settings.cuda_graphs).validate()
    torch.manual_seed(0)
    model = build_model(config.model, config.encoder, config.image_size).to(dev)
    optimizer = make_optimizer(model, config, dev, capturable=device == "cuda" and settings.cuda_graphs)
    images = torch.randint(0, 256, (max(4096, 2 * batch), 1, 28, 28), dtype=torch.uint8, device=dev)
    step = make_train_step(model, optimizer, images, 256.0, config, torch.float32, precision, dev)
    index_batches = torch.randint(0, len(images), (settings.steps, batch), device=dev)

    started = time.perf_counter()
    for k in range(settings.warmup):
        step(index_batches[k % settings.steps], config.lr)
    synchronize(dev)
    warmup_seconds = time.perf_counter() - started
    round_ms = []
    for _ in range(settings.rounds):
        synchronize(dev)
        started = time.perf_counter()
        for k in range(settings.steps):
            loss = step(index_batches[k], config.lr)
        synchronize(dev)
        round_ms.append((time.perf_counter() - started) / settings.steps * 1e3)
    if not torch.isfinite(loss).all():
        raise RuntimeError(f"bench: loss is not finite on {device} ({precision}, batch {batch})")
    ms = statistics.median(round_ms)
    img_per_s = batch / ms * 1e3
    flops = train_flops_per_image(model)
    return {"device": device, "device_name": device_name(device), "precision": precision, "batch": batch,
            "model": settings.model, "ms_per_step": ms, "ms_per_step_rounds": round_ms, "img_per_s": img_per_s,
            "gflops": img_per_s * flops / 1e9, "train_flops_per_image": flops,
            "seed_epoch_seconds": SEED_EPOCH_IMAGES / img_per_s,
            "seed_100_epochs_minutes": SEED_EPOCHS * SEED_EPOCH_IMAGES / img_per_s / 60,
            "warmup_steps": settings.warmup, "warmup_seconds": warmup_seconds, "timed_steps": settings.steps,
            "rounds": settings.rounds, "compile": settings.compile,
            "cuda_graphs": device == "cuda" and settings.cuda_graphs}


def run_bench(settings: BenchSettings, log=print) -> dict:
    devices = list(settings.devices or available_devices())
    peaks, rows = {}, []
    for device in devices:
        before = {precision: matmul_peak_gflops(device, precision) for precision in settings.precisions}
        device_rows = []
        for precision in settings.precisions:
            if precision == "bf16" and not native_bf16(torch.device(device)):
                log(f"skipping {device} bf16: no native bf16 on this {device} (emulated bf16 would be misleading)")
                continue
            for batch in settings.batch_sizes:
                device_rows.append(time_train_steps(settings, device, batch, precision))
        for precision in settings.precisions:  # the peak: the faster of its timings before and after the steps
            timed = [p for p in (before[precision], matmul_peak_gflops(device, precision)) if p]
            peaks[f"{device}/{precision}"] = max(timed, default=None)
        for row in device_rows:
            peak = peaks[f"{device}/{row['precision']}"]
            row["matmul_peak_gflops"] = peak
            row["share_of_peak"] = row["gflops"] / peak if peak else None
        rows += device_rows
    ratios = []
    for row in rows:
        if row["device"] == "cpu":
            continue
        cpu = next((r for r in rows if r["device"] == "cpu" and r["batch"] == row["batch"]
                    and r["precision"] == row["precision"]), None)
        if cpu:
            ratios.append({"device": row["device"], "precision": row["precision"], "batch": row["batch"],
                           "speedup_over_cpu": row["img_per_s"] / cpu["img_per_s"]})
    return {"what": "training steps (gather + forward + loss + backward + Adam), median of rounds, "
                    "warm-up (and any compile or graph capture) excluded",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_description(),
            "peaks_gflops": peaks, "rows": rows, "ratios": ratios}


def format_table(result: dict) -> str:
    rows = result["rows"]
    if not rows:
        return "nothing measured"
    first = rows[0]
    lines = [f"convae bench: model {first['model']}, {result['what']}; "
             f"{first['rounds']} rounds x {first['timed_steps']} steps after {first['warmup_steps']} warm-up steps; "
             f"torch {result['torch']}",
             "",
             f"{'device':<34} {'prec':<5} {'batch':>5} {'ms/step':>8} {'img/s':>9} {'GFLOP/s':>8} {'% peak':>7} "
             f"{'seed epoch':>10} {'100 epochs':>10} {'warm-up':>8}"]
    for r in rows:
        share = f"{100 * r['share_of_peak']:.0f}%" if r["share_of_peak"] else "-"
        extras = [k for k in ("compile", "cuda_graphs") if r[k]]
        name = f"{r['device']} ({r['device_name']})"[:34]
        lines.append(f"{name:<34} {r['precision']:<5} {r['batch']:>5} {r['ms_per_step']:>8.2f} {r['img_per_s']:>9.0f} "
                     f"{r['gflops']:>8.1f} {share:>7} {r['seed_epoch_seconds']:>9.1f}s "
                     f"{r['seed_100_epochs_minutes']:>8.1f}min {r['warmup_seconds']:>7.1f}s"
                     + (f"  [{', '.join(extras)}]" if extras else ""))
    lines.append("")
    lines.append("matmul peaks measured here (GFLOP/s): " + ", ".join(
        f"{k} {v:.0f}" if v else f"{k} not native" for k, v in result["peaks_gflops"].items()))
    lines.append(f"FLOPs per image per training step: {first['train_flops_per_image'] / 1e6:.1f} M "
                 "(3 x the forward multiply-adds x 2, counted from the layers)")
    lines.append("seed epoch = 60,000 images at that speed; 100 epochs = the seed's full run")
    if result.get("cpu"):
        lines.append(f"CPU: {result['cpu']}")
    for ratio in result["ratios"]:
        lines.append(f"{ratio['device']}/cpu speed ratio at batch {ratio['batch']}, {ratio['precision']}: "
                     f"{ratio['speedup_over_cpu']:.1f}x")
    return "\n".join(lines)
