"""The fused resize convolution (ResizeConv2d) against nn.Upsample + nn.Conv2d, side by side in one process.

For each model whose decoder resizes (resize, resnet, pixel) this builds the model twice with the same weights,
once as convae builds it and once with every ResizeConv2d taken apart into nn.Upsample(x2, nearest) + nn.Conv2d,
checks that both give the same logits, and alternates timed rounds of

  train  the training step `convae train` runs (forward, loss, backward, Adam), at --batch-size
  iw     importance-weighted evaluation: the K decoder passes per test image of `convae eval --iw-samples`

printing the median images/s (train) or decoder passes/s (iw) of each and their ratio. Alternating rounds keeps
both exposed to the same drift of a shared machine.

    python benchmarks/resize_conv.py                        # CPU: resize, resnet, pixel
    python benchmarks/resize_conv.py --device cuda --models resnet pixel --json-out gpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import torch
import torch.nn as nn

from convae.config import TrainConfig
from convae.evaluation.likelihood import log_weights
from convae.models import build_model
from convae.models.decoders import ResizeConv2d
from convae.runtime import synchronize
from convae.training.engine import make_optimizer, make_train_step, uses_cuda_graphs


def unfused(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ResizeConv2d replaced by nn.Upsample + an nn.Conv2d holding its weights."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ResizeConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, 3, padding=1, bias=child.bias is not None)
                conv.load_state_dict(child.state_dict())
                setattr(parent, name, nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv))
    return model.to(next(model.parameters()).device)


def train_round(model, name: str, batch: int, steps: int, device: torch.device):
    config = TrainConfig(model=name, batch_size=batch, device=device.type).validate()
    optimizer = make_optimizer(model, config, device, capturable=uses_cuda_graphs(config, device))
    images = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8, device=device)
    step = make_train_step(model, optimizer, images, 256.0, config, torch.float32, "fp32", device)
    batches = torch.randint(0, len(images), (steps, batch), device=device)

    def run() -> float:
        synchronize(device)
        started = time.perf_counter()
        for k in range(steps):
            step(batches[k], config.lr)
        synchronize(device)
        return steps * batch / (time.perf_counter() - started)
    return run


def iw_round(model, images: int, k: int, device: torch.device):
    x = (torch.rand(images, 1, 32, 32, device=device) > 0.7).float()

    @torch.no_grad()
    def run() -> float:
        generator = torch.Generator(device=device).manual_seed(0)
        synchronize(device)
        started = time.perf_counter()
        log_weights(model.eval(), x, k, generator)
        synchronize(device)
        return images * k / (time.perf_counter() - started)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resize", "resnet", "pixel"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    parser.add_argument("--iw-images", type=int, default=4, help="test images per timed IW round")
    parser.add_argument("--iw-k", type=int, default=256, help="samples per image in a timed IW round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    device = torch.device(args.device)
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu}, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; medians of {args.rounds} alternating rounds")
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        fused = build_model(name).to(device)
        plain = unfused(fused)
        with torch.no_grad():
            z = torch.randn(8, fused.decoder.latent_dim, device=device)
            x = (torch.rand(8, 1, 32, 32, device=device) > 0.5).float()
            same = [m.decoder(z, x) if getattr(m.decoder, "autoregressive", False) else m.decoder(z)
                    for m in (fused.eval(), plain.eval())]
        difference = (same[0] - same[1]).abs().max().item()
        for what in ("train", "iw"):
            runs = {label: (train_round(m, name, args.batch_size, args.steps, device) if what == "train" else
                            iw_round(m, args.iw_images, args.iw_k, device))
                    for label, m in (("unfused", plain), ("fused", fused))}
            for run in runs.values():
                run()  # warm-up
            rates: dict[str, list[float]] = {label: [] for label in runs}
            for _ in range(args.rounds):
                for label, run in runs.items():
                    rates[label].append(run())
            median = {label: statistics.median(r) for label, r in rates.items()}
            unit = "img/s" if what == "train" else "decoder passes/s"
            row = {"model": name, "what": what, "unit": unit, "unfused": median["unfused"], "fused": median["fused"],
                   "speedup": median["fused"] / median["unfused"], "max_logit_difference": difference}
            rows.append(row)
            print(f"{name:<7} {what:<5} unfused {row['unfused']:8.1f}  fused {row['fused']:8.1f} {unit:<16} "
                  f"x{row['speedup']:.2f}   (logits differ by {difference:.1e})")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"torch": torch.__version__, "device": where, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
