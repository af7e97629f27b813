"""``convae bench`` (training steps timed on every device present) and ``convae models`` (the model family)."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import PRECISIONS, TrainConfig
from ..errors import ConfigError
from ..models import ENCODERS


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="time training steps on every device present (the CPU/GPU gap)",
                       description="Time training steps (forward, backward, Adam) of a model on the CPU and on every "
                                   "GPU present, after warm-up, and print ms/step, images/s, GFLOP/s, the share of "
                                   "the matmul peak measured here, and the time of the seed's epochs at that speed.")
    p.add_argument("--model", default="seed", help="model name (default seed)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32], help="one or more (default 32)")
    p.add_argument("--precision", choices=PRECISIONS, nargs="+", default=["fp32"], help="one or more (default fp32)")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], nargs="+", help="default: cpu and any GPU present")
    p.add_argument("--steps", type=int, default=50, help="steps per timed round (default 50)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward pass")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", help="launch CUDA kernels one by one")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON to FILE")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("models", help="list the models with parameters, FLOPs and a constant-input dots test",
                       description="List the models: parameters, FLOPs per image, the constant-input test of their "
                                   "upsampling (0 = no dots), and the image shapes and likelihoods each accepts.")
    p.add_argument("--encoder", choices=tuple(ENCODERS), help="count with this encoder instead of each model's own")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..benchmarking.bench import BenchSettings, available_devices, format_table, run_bench
    from ..files import atomic_write_json

    TrainConfig(model=args.model).validate()  # the one place that knows which models exist
    for name in ("steps", "rounds"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name}: must be a positive integer, got {getattr(args, name)}")
    if args.warmup < 0 or any(b <= 0 for b in args.batch_size):
        raise ConfigError("--warmup must be >= 0 and --batch-size positive")
    missing = [d for d in args.device or [] if d not in available_devices()]
    if missing:
        raise ConfigError(f"--device {missing[0]}: not available on this machine")
    settings = BenchSettings(args.model, tuple(args.batch_size), tuple(args.precision),
                             tuple(args.device) if args.device else None, args.steps, args.rounds, args.warmup,
                             args.compile, args.cuda_graphs)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    result = run_bench(settings, log=log)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    if args.json_out:
        atomic_write_json(args.json_out, result)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..benchmarking.flops import forward_flops_per_image
    from ..evaluation.artifacts import decoder_flatness
    from ..models import MODELS, accepted_likelihoods, accepted_shapes, example_model
    from ..models.registry import describe_models

    rows = []
    for name in describe_models():
        spec = MODELS.get(name)  # a built-in recipe (a plug-in's encoder is its own)
        try:  # a ladder reads with its own path, a plug-in may take no --encoder or only some likelihoods
            model = example_model(name, args.encoder)
        except ValueError as e:
            print(f"convae models: {name}: cannot build it at 1x32x32 ({e})", file=sys.stderr)
            continue
        encoder = "own" if spec is None else args.encoder if args.encoder and spec.builder is None else spec.encoder
        rows.append({"model": name, "encoder": encoder,
                     "latent_dim": model.latent_dim, "accepts": accepted_shapes(name),
                     "likelihoods": accepted_likelihoods(name),
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "decoder_parameters": sum(p.numel() for p in model.decoder.parameters()),
                     "forward_mflops_per_image": forward_flops_per_image(model) / 1e6,
                     "constant_input_unflatness": decoder_flatness(name),
                     "description": describe_models()[name],  # a plug-in's own words, once it is imported
                     **model.describe_densities()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<12} {'encoder':<9} {'z':>4} {'params':>10} {'decoder':>10} {'MFLOP/img':>10} {'dots@init':>9}  description")
    for r in rows:
        flat = "-" if r["constant_input_unflatness"] is None else f"{r['constant_input_unflatness']:.2f}"
        print(f"{r['model']:<12} {r['encoder']:<9} {r['latent_dim']:>4} {r['parameters']:>10,} {r['decoder_parameters']:>10,} "
              f"{r['forward_mflops_per_image']:>10.1f} {flat:>9}  {r['description']}"
              + ("" if (r["prior"], r["posterior"]) == ("StandardNormal", "DiagonalGaussian") else
                 f" (prior {r['prior']}, posterior {r['posterior']}, KL {r['kl']})"))
    print("\nimages each model takes (C x H x W; any encoder) and its likelihoods:")
    for r in rows:
        print(f"  {r['model']:<12} {', '.join(r['accepts'])}; {', '.join(r['likelihoods'])}")
    print("MFLOP/img: one forward pass at 1x32x32 (2 FLOPs per multiply-add, counted from the layers); a training "
          "step is 3x. "
          "dots@init: a constant feature map through the fresh decoder's upsampling layers, (max - min) / mean of "
          "the interior; 0 = flat.")
    return 0
