"""Threads or processes on a CPU: the seed model at one global batch, P processes x T threads each, side by side.

Each layout trains with convae's own step (the engine, DDP over gloo for P > 1, each rank on its batch / P slice),
after warm-up, in timed rounds of ``--steps`` steps that start and end on a barrier; the layouts take turns round
by round (``--repeats`` times) so drift on a shared machine hits them alike. Reported: the median images/s of each
layout and its ratio to the first.

    python benchmarks/ddp_cpu.py                       # 1x2 against 2x1 at global batch 32
    python benchmarks/ddp_cpu.py --layouts 1x1 1x2 2x1 --batch-size 32 256 --json-out docs/data/ddp_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp

from convae.config import TrainConfig
from convae.models import build_model
from convae.benchmarking.bench import cpu_description
from convae.runtime import Runtime
from convae.training.engine import make_optimizer, make_train_step


def _worker(rank: int, world: int, threads: int, port: int, batch: int, steps: int, warmup: int, rounds: int, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    runtime = Runtime.from_environment(timeout_s=120) if world > 1 else Runtime()
    device = torch.device("cpu")
    config = TrainConfig(batch_size=batch, device="cpu").validate()
    torch.manual_seed(0)
    model = build_model("seed")
    step = make_train_step(runtime.wrap(model, device), make_optimizer(model, config, device),
                           torch.randint(0, 256, (8192, 1, 28, 28), dtype=torch.uint8), 256.0, config,
                           torch.float32, "fp32", device, runtime.distributed)
    batches = torch.randint(0, 8192, (steps, batch))
    for k in range(warmup):
        step(runtime.shard(batches[k % steps]), config.lr)
    times = []
    for _ in range(rounds):
        runtime.barrier()
        started = time.perf_counter()
        for k in range(steps):
            step(runtime.shard(batches[k]), config.lr)
        runtime.barrier()
        times.append(time.perf_counter() - started)
    allreduce = []
    if world > 1:  # the gradient all-reduce alone: every parameter's gradient in float32, as DDP sends it
        grads = torch.zeros(sum(p.numel() for p in model.parameters()))
        for k in range(25):
            runtime.barrier()
            started = time.perf_counter()
            runtime.all_reduce(grads)
            if k >= 5:
                allreduce.append(time.perf_counter() - started)
    if rank == 0:
        out.put((times, allreduce))
    runtime.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_layout(processes: int, threads: int, batch: int, steps: int, warmup: int, rounds: int):
    """Seconds per round of ``steps`` steps, and of single gradient all-reduces; one fresh process group per call."""
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(processes, threads, free_port(), batch, steps, warmup, rounds, queue), nprocs=processes)
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="PxT: P processes of T threads")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[32], help="global batch(es)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per process group")
    parser.add_argument("--repeats", type=int, default=3, help="process groups per layout, taken in turns")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    layouts = [tuple(int(v) for v in layout.split("x")) for layout in args.layouts]

    results = []
    for batch in args.batch_size:
        samples = {layout: [] for layout in layouts}
        allreduce_ms = {layout: [] for layout in layouts}
        for _ in range(args.repeats):
            for layout in layouts:
                rounds, allreduce = time_layout(*layout, batch, args.steps, args.warmup, args.rounds)
                samples[layout] += [args.steps * batch / t for t in rounds]
                allreduce_ms[layout] += [t * 1e3 for t in allreduce]
        base = statistics.median(samples[layouts[0]])
        for (p, t), values in samples.items():
            median = statistics.median(values)
            ar = statistics.median(allreduce_ms[(p, t)]) if allreduce_ms[(p, t)] else None
            results.append({"batch": batch, "processes": p, "threads": t, "img_per_s": median,
                            "img_per_s_samples": values, "ratio_to_first": median / base,
                            "ms_per_step": batch / median * 1e3, "gradient_allreduce_ms": ar})
            print(f"batch {batch:>4}  {p} process(es) x {t} thread(s): {median:8.0f} img/s, "
                  f"{batch / median * 1e3:6.1f} ms/step ({median / base:.2f}x {layouts[0][0]}x{layouts[0][1]})"
                  + (f"; gradient all-reduce alone {ar:.2f} ms" if ar else ""), flush=True)
    report = {"cpu": cpu_description(), "torch": torch.__version__, "cores": os.cpu_count(), "steps": args.steps,
              "rounds": args.rounds, "repeats": args.repeats, "results": results}
    print(f"CPU: {report['cpu']}, {report['cores']} cores, torch {report['torch']}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
