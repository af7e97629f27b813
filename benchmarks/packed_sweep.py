"""Packed members against the same members run one after another, side by side in one process (issue 24).

For a model, batch size and number of members M: M fresh members (each its own initial weights, optimizer and noise
generator), timed in alternating rounds of S steps each:

* ``in turn``: each member's own solo step (``convae train``'s eager step, the default threads), one member after the
  other: what M separate runs on this machine would do;
* ``threads``: the pack's members side by side, one per core (``ThreadedStep``);
* ``batched``: the pack's one set of batched kernels for all members (``BatchedStep``, torch.func.vmap).

Images per second of all members together, median over rounds, and each pack's ratio to ``in turn``.

    python benchmarks/packed_sweep.py --model seed --batch-size 32 --members 8
    python benchmarks/packed_sweep.py --model fc --batch-size 128 --members 4 --json-out docs/data/packed_fc.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from convae.config import TrainConfig
from convae.data import ImageData
from convae.models import build_run_model
from convae.runtime import synchronize
from convae.benchmarking.bench import cpu_description
from convae.training.engine import make_train_step
from convae.training.packed import pack_step, probe_lane


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps per member per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json-out")
    args = parser.parse_args()

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8, generator=generator)
    data = ImageData("noise", images.to(device), torch.zeros(4096, dtype=torch.long, device=device),
                     images[:64].to(device), torch.zeros(64, dtype=torch.long, device=device), 256.0)
    configs = [TrainConfig(model=args.model, batch_size=args.batch_size, seed=s, lr=1e-3 * (1 + s / 10)).validate()
               for s in range(args.members)]
    lanes = {way: [probe_lane(c, data, device, way if way != "in turn" else "threads", build_run_model)
                   for c in configs] for way in ("in turn", "threads", "batched")}
    for lane, config in zip(lanes["in turn"], configs):  # the solo step: torch's global noise, default threads
        lane.train_step = make_train_step(lane.model, lane.optimizer, data.train_images, data.levels, config,
                                          torch.float32, config.precision, device, eager_only=True)
    steps = {"threads": pack_step("threads", lanes["threads"][0]), "batched": pack_step("batched", lanes["batched"][0])}
    index = torch.randint(0, 4096, (args.steps, args.members, args.batch_size), generator=generator).to(device)
    lrs = [c.lr for c in configs]

    def one_round(way: str) -> float:
        synchronize(device)
        started = time.perf_counter()
        if way == "in turn":
            for s in range(args.steps):
                for k, lane in enumerate(lanes[way]):
                    lane.train_step(index[s, k], lrs[k], s)
        else:
            with steps[way].one_thread_each():  # as a pack trains (for threads: one intra-op thread per member)
                for s in range(args.steps):
                    steps[way](lanes[way], list(index[s]), lrs)
        synchronize(device)
        return args.members * args.batch_size * args.steps / (time.perf_counter() - started)

    for way in ("in turn", "threads", "batched"):  # warm-up
        one_round(way)
    rates = {way: [] for way in ("in turn", "threads", "batched")}
    for _ in range(args.rounds):
        for way in rates:
            rates[way].append(one_round(way))
    medians = {way: statistics.median(r) for way, r in rates.items()}
    result = {"model": args.model, "batch_size": args.batch_size, "members": args.members, "steps": args.steps,
              "rounds": args.rounds, "device": str(device), "cpu": cpu_description(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "img_per_s_rounds": rates, "img_per_s": medians,
              "ratio_to_in_turn": {w: medians[w] / medians["in turn"] for w in ("threads", "batched")}}
    print(f"{args.members} x {args.model}, batch {args.batch_size}, {device} ({result['cpu']}, "
          f"{result['threads']} threads), median of {args.rounds} rounds of {args.steps} steps:")
    for way, rate in medians.items():
        extra = "" if way == "in turn" else f"  {rate / medians['in turn']:.2f}x"
        print(f"  {way:<8} {rate:8.0f} img/s{extra}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
