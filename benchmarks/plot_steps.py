"""Training loss (the -ELBO of each logged stretch of steps) against the step, for runs' steps.jsonl files, on one
plot; each run's test -ELBO at its epoch ends as dots (docs/ladder_cpu_curve.png).

    python benchmarks/plot_steps.py docs/ladder_cpu_curve.png "ladder, binarized=runs/ladder_bin" \\
        "resize, binarized=runs/resize_bin"
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from convae.files import read_jsonl  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+", help="label=run folder")
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for item in args.runs:
        label, folder = item.split("=", 1)
        steps = read_jsonl(Path(folder) / "steps.jsonl")
        line, = ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label=f"{label}: training loss")
        epochs = [m for m in read_jsonl(Path(folder) / "metrics.jsonl") if not m.get("partial_epoch")]
        ax.plot([m["step"] for m in epochs], [m["test_neg_elbo"] for m in epochs], "o", color=line.get_color(),
                label=f"{label}: test −ELBO")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per image")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
