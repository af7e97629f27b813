"""Test negative ELBO against training time for runs' metrics.jsonl files, on one plot (docs/preset_curves.png).

    python benchmarks/plot_presets.py docs/preset_curves.png seed=docs/data/seed_preset_10_epochs_cpu.jsonl \\
        fast=docs/data/fast_preset_3_epochs_cpu.jsonl --target 161 --baseline-seconds 912
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from convae.files import read_jsonl  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+", help="label=path/to/metrics.jsonl")
    parser.add_argument("--target", type=float, help="draw this test -ELBO as a horizontal line")
    parser.add_argument("--baseline-seconds", type=float, help="baseline time for 10 seed epochs; draws 1/5 of it")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for item in args.runs:
        label, path = item.split("=", 1)
        metrics = [m for m in read_jsonl(path) if not m.get("partial_epoch")]
        ax.plot([m["train_seconds"] for m in metrics], [m["test_neg_elbo"] for m in metrics], "o-", label=label)
    if args.target:
        ax.axhline(args.target, color="gray", ls=":", label=f"target {args.target:g} nats")
    if args.baseline_seconds:
        ax.axvline(args.baseline_seconds / 5, color="red", ls="--", lw=0.8, label="1/5 of baseline's 10 epochs")
    ax.set_xlabel("training seconds (evaluation excluded), 2-core CPU")
    ax.set_ylabel("test -ELBO, nats per image (32x32 gray)")
    ax.set_ylim(155, 215)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
