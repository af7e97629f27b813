"""convae's training step against the plain PyTorch port, side by side in one process.

Alternates rounds of the baseline (benchmarks/baseline_seed.py: DataLoader, sigmoid + F.binary_cross_entropy)
and of convae's engine (the step `convae train` runs), same batch size, fp32, same CPU threads, and prints the
median images/s of each and their ratio. Alternating rounds keeps both exposed to the same drift of a shared
machine.

    python benchmarks/compare_speed.py                    # seed preset: batch 32, fp32
    python benchmarks/compare_speed.py --batch-size 128   # convae at another batch (baseline stays at 32)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
import baseline_seed  # noqa: E402

from convae.config import TrainConfig  # noqa: E402
from convae.data import load_data  # noqa: E402
from convae.models import build_model  # noqa: E402
from convae.training.engine import make_optimizer, make_train_step  # noqa: E402


def baseline_rounds(train_x, steps):
    torch.manual_seed(0)
    model = baseline_seed.VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(train_x), batch_size=32, shuffle=True, drop_last=True)
    batches = iter(())

    def run():
        nonlocal batches
        started = time.perf_counter()
        for _ in range(steps):
            try:
                (x,) = next(batches)
            except StopIteration:
                batches = iter(loader)
                (x,) = next(batches)
            y, mu, sigma = model(x)
            loss = baseline_seed.loss_function(y, x, mu, sigma)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return steps * 32 / (time.perf_counter() - started)
    return run


def convae_rounds(data, steps, batch, precision, compile_):
    torch.manual_seed(0)
    config = TrainConfig(batch_size=batch, precision=precision, compile=compile_, device="cpu").validate()
    model = build_model("seed")
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    step = make_train_step(model, optimizer, data.train_images, data.levels, config, torch.float32, precision,
                           torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.train_images), generator=generator)
    position = 0

    def run():
        nonlocal position
        started = time.perf_counter()
        for _ in range(steps):
            if position + batch > len(order):
                position = 0
            step(order[position:position + batch], config.lr)
            position += batch
        return steps * batch / (time.perf_counter() - started)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100, help="baseline steps per round (convae: same images)")
    parser.add_argument("--batch-size", type=int, default=32, help="convae's batch (the baseline's is 32)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    train_x, _ = baseline_seed.load_mnist_32()
    data = load_data()
    contenders = {"baseline": baseline_rounds(train_x, args.steps),
                  "convae": convae_rounds(data, args.steps * 32 // args.batch_size, args.batch_size,
                                          args.precision, args.compile)}
    for run in contenders.values():  # warm-up round each, untimed
        run()
    rates = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            rates[name].append(run())
    medians = {name: statistics.median(r) for name, r in rates.items()}
    result = {"what": f"CPU training throughput, images/s, median of {args.rounds} alternating rounds of "
                      f"{args.steps * 32} images after one warm-up round",
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "baseline": {"batch": 32, "precision": "fp32", "img_per_s": medians["baseline"], "rounds": rates["baseline"]},
              "convae": {"batch": args.batch_size, "precision": args.precision, "compile": args.compile,
                         "img_per_s": medians["convae"], "rounds": rates["convae"]},
              "ratio": medians["convae"] / medians["baseline"]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["what"])
        print(f"  baseline (DataLoader, batch 32, fp32): {medians['baseline']:8.0f} img/s")
        print(f"  convae   (batch {args.batch_size}, {args.precision}{', compile' if args.compile else ''}):"
              f"{' ' * max(0, 14 - len(str(args.batch_size)) - len(args.precision))}{medians['convae']:8.0f} img/s")
        print(f"  ratio convae / baseline: {result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
