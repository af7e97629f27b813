"""The ``convae`` command line: ``convae train``, ``convae --help``."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

from .config import DEVICES, DTYPES, PRECISIONS, PRESETS, ConfigError, TrainConfig
from .data import DataError
from .faults import (EXIT_BAD_INPUT, EXIT_BUSY, EXIT_FAILED, EXIT_FILESYSTEM, EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY,
                     FileSystemFault, OutOfMemory, RunBusy, RunLock, debug, describe_os_error, first_line,
                     is_out_of_memory)
from .files import atomic_write_bytes, atomic_write_json
from .reporting.html import ReportError
from .runtime import DEFAULT_TIMEOUT_S, DistributedError, is_peer_failure
from .training.checkpoint import CheckpointError, list_checkpoints


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (``convae train: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n" if _speaks() else None)


def _speaks() -> bool:
    """Under torchrun every rank meets the same usage or input error; rank 0 alone says it."""
    return os.environ.get("RANK", "0") == "0"


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a VAE (default: the seed's experiment)",
                       description="Train a VAE. The defaults reproduce the seed: model 'seed', batch 32, Adam 1e-3, "
                                   "100 epochs on the embedded MNIST resized to 32x32. Options left out keep their "
                                   "defaults, or with --resume the run's own settings.")
    # Defaults are None so we can tell which options the user typed (they override a preset or a resumed run).
    p.add_argument("--model", help="model name (see `convae models`); default: seed")
    p.add_argument("--encoder", choices=["mlp", "conv", "resnet"], help="encoder; default: the model's own")
    p.add_argument("--conditional", action="store_true", default=None,
                   help="condition encoder and decoder on the data's class labels (a conditional VAE: samples of a "
                        "chosen class with `convae sample --label K`)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe: " + "; ".join(
        f"{k} = {v}" for k, v in PRESETS.items()))
    p.add_argument("--epochs", type=int, help="epochs to train (default 100)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps in all, ending like an epoch")
    p.add_argument("--batch-size", type=int, help="images per step (default 32)")
    p.add_argument("--lr", type=float, help="Adam learning rate, or the peak of --lr-schedule onecycle (default 1e-3)")
    p.add_argument("--lr-schedule", choices=["constant", "onecycle"],
                   help="onecycle: linear warm-up to --lr, then cosine down to lr/100 (default constant)")
    p.add_argument("--warmup-fraction", type=float, help="share of all steps spent warming up (onecycle; default 0.25)")
    p.add_argument("--beta", type=float, help="weight of the KL term (default 1: the ELBO; the logged -ELBO stays "
                                              "unweighted)")
    p.add_argument("--kl-warmup", type=int, metavar="STEPS",
                   help="raise the KL weight linearly from 0 to --beta over STEPS steps (default 0: no warm-up)")
    p.add_argument("--free-bits", type=float, metavar="NATS",
                   help="don't penalise a latent dimension's batch-mean KL below NATS (default 0)")
    p.add_argument("--iw-train", type=int, metavar="K",
                   help="train on the importance-weighted bound with K samples (IWAE; default 1 = the ELBO)")
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="rescale each step's gradient to at most this L2 norm (default: no clipping)")
    p.add_argument("--ema", type=float, metavar="DECAY",
                   help="keep an exponential moving average of the weights (e.g. 0.999) and evaluate, sample and "
                        "export with it")
    p.add_argument("--seed", type=int, help="seed for initialisation, shuffling and sampling (default 0)")
    p.add_argument("--dtype", choices=DTYPES, help="parameter dtype; float64 is the seed's arithmetic (default float32)")
    p.add_argument("--precision", choices=PRECISIONS, help="bf16: autocast the model, loss stays float32 (default fp32)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--device", choices=DEVICES, help="auto picks a GPU when there is one (default auto)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=None,
                   help="take batches in order, as the seed does")
    p.add_argument("--binarize", choices=["none", "dynamic"], help="dynamic: resample binary pixels each draw")
    p.add_argument("--resize", choices=["auto", "bilinear", "pad", "area"],
                   help="MNIST 28 -> 32: bilinear (the seed) or zero padding; auto = pad when --binarize dynamic. "
                        "Other data: centre-crop then area (auto) or bilinear resize; pad: pad to a square")
    p.add_argument("--data", metavar="SOURCE",
                   help="mnist (the embedded copy, default), shapes[:N] (generated colour shapes), a folder of image "
                        "files (sub-folders = labels; train/ and test/ = the split), a folder of IDX files, or a "
                        ".npy/.npz file")
    p.add_argument("--data-dir", help="folder with the four MNIST-format IDX files (plain or .gz); same as --data DIR")
    p.add_argument("--image-size", type=int, help="images are brought to this size, 32 or 64 for the conv models "
                                                  "(default 32)")
    p.add_argument("--channels", choices=["auto", "1", "3"], help="1 gray, 3 colour; auto: from the data (default)")
    p.add_argument("--likelihood", choices=["bernoulli", "continuous-bernoulli", "logistic", "gaussian"],
                   help="p(x|z): bernoulli (the seed's), continuous-bernoulli (normalised on [0, 1]), logistic "
                        "(discretised, on 8-bit levels; reports bits/dim), gaussian (learned variance, or "
                        "--gaussian-sigma)")
    p.add_argument("--gaussian-sigma", type=float, metavar="S", help="with --likelihood gaussian: fixed std S")
    p.add_argument("--test-fraction", type=float, help="held out for testing where the data has no split "
                                                       "(default 0.1, fixed seed)")
    p.add_argument("--cache-dir", help="where prepared images are cached (default .convae-cache beside the run)")
    p.add_argument("--resident-max-bytes", type=int, metavar="BYTES",
                   help="training images larger than this stream from the memory-mapped cache instead of living on "
                        "the device (default: half the GPU's free memory, or half the RAM)")
    p.add_argument("--eval-batch-size", type=int, help="images per batch when evaluating the test set (default 500)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="evaluate on only the first N test images")
    p.add_argument("--out", help="run folder (default runs/<date-time>); must not hold a run already")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint if it has one, else start it there "
                        "(for torchrun --max-restarts and re-queued jobs: the same command every time)")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (epoch ends always checkpoint)")
    p.add_argument("--checkpoint-minutes", type=float, metavar="M",
                   help="also checkpoint when M minutes have passed since the last checkpoint")
    p.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help=f"under torchrun: how long joining the group or a collective may wait for a peer before "
                        f"the run ends with an error (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--progress-every", type=int, metavar="STEPS",
                   help="steps between progress records: bar, steps.jsonl, TensorBoard (default 25)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                   help="write no TensorBoard event files (RUN/tb)")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="don't refresh RUN/report.html at epoch ends")
    return p


# Settings a resumed run may change; the others define the run and stay as they were.
RESUMABLE_OVERRIDES = {"epochs", "max_steps", "quiet", "device", "compile", "checkpoint_every", "checkpoint_minutes",
                       "dist_timeout", "tensorboard", "report", "progress_every"}


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's settings and whether it resumes. ``--auto-resume`` resumes when ``--out`` holds a checkpoint:
    then the options given must be the run's own (a re-queued job repeats its command) or resumable ones."""
    given = {k: v for k, v in vars(args).items()
             if v is not None and k in TrainConfig.__dataclass_fields__}
    if args.auto_resume:
        if args.resume or not args.out:
            raise ConfigError("--auto-resume: needs --out DIR (the run to continue or start) and no --resume")
        if list_checkpoints(Path(args.out) / "checkpoints"):
            return _resumed_config(Path(args.out), given, args.preset, strict=False), True
    if args.resume:
        return _resumed_config(Path(args.resume), given, args.preset, strict=True), True
    values = dict(PRESETS[args.preset]) if args.preset else {}
    if args.preset:
        values["extra"] = {"preset": args.preset}
    values.update(given)
    return TrainConfig(**values), False


def _resumed_config(run_dir: Path, given: dict, preset: str | None, strict: bool) -> TrainConfig:
    config_file = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {run_dir}: no such folder")
    if not config_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there (not a convae run folder)")
    if not list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"--resume {run_dir}: the run never reached its first checkpoint; start it again with "
                          f"--out {run_dir} (or --auto-resume --out {run_dir})")
    try:
        saved = json.loads(config_file.read_text())["config"]
        if not isinstance(saved, dict):
            raise TypeError(f"settings are a {type(saved).__name__}, not a mapping")
    except (ValueError, KeyError, TypeError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise ConfigError(f"{config_file}: unreadable ({type(e).__name__}: {str(e)[:120]})") from None
    if not strict:  # auto-resume: a repeated option is fine, a changed one is not
        preset_values = PRESETS.get(preset, {}) if preset else {}
        given = {k: v for k, v in given.items() if k == "out" or k in RESUMABLE_OVERRIDES or saved.get(k) != v}
        preset = preset if any(saved.get(k) != v for k, v in preset_values.items()) else None
    fixed = sorted(set(given) - RESUMABLE_OVERRIDES - {"out"})
    if "out" in given and Path(given["out"]) != run_dir:
        raise ConfigError(f"--out {given['out']}: a resumed run stays in its own folder {run_dir} (drop --out, or "
                          f"start a new run without --resume)")
    if fixed or preset:
        names = ", ".join("--" + n.replace("_", "-") for n in fixed) or f"--preset {preset}"
        raise ConfigError(f"{names}: cannot change when resuming {run_dir} (only "
                          f"{', '.join('--' + n.replace('_', '-') for n in sorted(RESUMABLE_OVERRIDES))} can)")
    try:
        return TrainConfig.from_dict({**saved, **given, "out": str(run_dir)}).validate()
    except ConfigError as e:
        raise ConfigError(f"{config_file}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{config_file}: a setting convae did not write ({type(e).__name__}: {str(e)[:120]})") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .runtime import Runtime
    from .training import NonFiniteLoss, TrainingInterrupted, train

    runtime = Runtime.from_environment(args.dist_timeout or DEFAULT_TIMEOUT_S)
    try:
        # rank 0 alone reads the run folder (other nodes need not see it) and tells the others what it found
        found, error = None, None
        if runtime.is_writer:
            try:
                found = config_from_args(args)
            except ConfigError as e:
                error = e
        runtime.agree_on_errors(error)
        config, resume = runtime.broadcast(found)
        try:
            result = train(config, resume=resume, auto_resume=args.auto_resume, argv=sys.argv,
                           runtime=runtime)
        except TrainingInterrupted as e:
            if runtime.is_writer:
                print(f"convae: {e}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except NonFiniteLoss as e:
            if runtime.is_writer:
                print(f"convae: error: {e}", file=sys.stderr)
            return EXIT_FAILED
        except RuntimeError as e:
            if not (runtime.distributed and is_peer_failure(e)):
                raise
            first = first_line(e)
            print(f"convae train: error: rank {runtime.rank}: lost a peer of the process group ({first}); "
                  f"the newest checkpoint in {config.out} is kept (torchrun --max-restarts and --auto-resume "
                  "continue from it)", file=sys.stderr)
            return EXIT_FAILED
        if runtime.is_writer:
            print(f"done: {result.run_dir}")
        return 0
    finally:
        runtime.close()


def _bench_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="time training steps on every device present (the CPU/GPU gap)",
                       description="Time training steps (forward, backward, Adam) of a model on the CPU and on every "
                                   "GPU present, after warm-up, and print ms/step, images/s, GFLOP/s, the share of "
                                   "the matmul peak measured here, and the time of the seed's epochs at that speed.")
    p.add_argument("--model", default="seed")
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
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchmarking.bench import BenchSettings, available_devices, format_table, run_bench

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
    from .benchmarking.flops import forward_flops_per_image
    from .evaluation.report import decoder_flatness
    from .models import MODELS, accepted_likelihoods, accepted_shapes, build_model

    rows = []
    for name, spec in MODELS.items():
        model = build_model(name, args.encoder)
        rows.append({"model": name, "encoder": args.encoder or spec.encoder, "latent_dim": spec.latent_dim,
                     "accepts": accepted_shapes(name),
                     "likelihoods": accepted_likelihoods(name),
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "decoder_parameters": sum(p.numel() for p in model.decoder.parameters()),
                     "forward_mflops_per_image": forward_flops_per_image(model) / 1e6,
                     "constant_input_unflatness": decoder_flatness(name), "description": spec.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<9} {'encoder':<7} {'z':>4} {'params':>10} {'decoder':>10} {'MFLOP/img':>10} {'dots@init':>9}  description")
    for r in rows:
        flat = "-" if r["constant_input_unflatness"] is None else f"{r['constant_input_unflatness']:.2f}"
        print(f"{r['model']:<9} {r['encoder']:<7} {r['latent_dim']:>4} {r['parameters']:>10,} {r['decoder_parameters']:>10,} "
              f"{r['forward_mflops_per_image']:>10.1f} {flat:>9}  {r['description']}")
    print("\nimages each model takes (C x H x W; any encoder) and its likelihoods:")
    for r in rows:
        print(f"  {r['model']:<9} {', '.join(r['accepts'])}; {', '.join(r['likelihoods'])}")
    print("MFLOP/img: one forward pass at 1x32x32 (2 FLOPs per multiply-add, counted from the layers); a training "
          "step is 3x. "
          "dots@init: a constant feature map through the fresh decoder's upsampling layers, (max - min) / mean of "
          "the interior; 0 = flat.")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.report import evaluate_run, iw_bounds_path
    from .evaluation.runs import open_run
    from .runtime import Runtime

    if args.iw_samples < 0:
        raise ConfigError(f"--iw-samples: must be >= 0, got {args.iw_samples}")
    runtime = Runtime.from_environment()
    try:
        if runtime.distributed and not args.iw_samples:
            raise ConfigError("torchrun: convae eval shares only the importance-weighted bound among the processes; "
                              "give --iw-samples K (or run it as one process)")
        with contextlib.ExitStack() as held:
            error = None
            try:
                run = open_run(args.run, args.device, args.model, runtime.local_rank)
                if runtime.is_writer:  # it writes RUN/eval/: not while a training run writes the folder
                    held.enter_context(RunLock(run.path, "convae eval"))
            except Exception as e:  # every rank stops on rank 0's (or any rank's) error, none waits for a peer
                error = e
            runtime.agree_on_errors(error)
            try:
                result = evaluate_run(run, iw_samples=args.iw_samples, test_limit=args.test_limit,
                                      pictures=not args.no_pictures, progress=not args.json and sys.stderr.isatty(),
                                      frechet=args.frechet, runtime=runtime)
            except KeyboardInterrupt:
                kept = iw_bounds_path(run.path, args.iw_samples)
                if args.iw_samples and kept.is_file() and _speaks():
                    print(f"convae eval: the IW bounds of the images done so far are kept in {kept}: the same "
                          "command goes on from there", file=sys.stderr)
                raise
    finally:
        runtime.close()
    if not runtime.is_writer:
        return 0
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{run.path} (model {run.config.model}, step {run.step}); {result['protocol']}")
    beside = (f"entropy floor {result['entropy_floor']:.2f}" if result["entropy_floor"] is not None else
              f"{result['test_bits_per_dim']:.4f} bits/dim" if "test_bits_per_dim" in result else
              f"{result['likelihood']} likelihood")
    print(f"  test -ELBO{' (given the label)' if result['conditional'] else ''}  {result['test_neg_elbo']:.2f} "
          f"nats/image = L_likelihood {result['test_L_likelihood']:.2f} + L_KL {result['test_L_KL']:.2f}   ({beside}, {result['n_test_images']} images)")
    if "iw_nll" in result:
        given = " | label" if result["conditional"] else ""
        print(f"  IW bound    -log p(x{given}) <= {result['iw_nll']:.2f} +- {result['iw_nll_std_error']:.2f} nats/image "
              f"(K = {result['iw_samples']}; {result['arithmetic']})" + (f" = {result['iw_bits_per_dim']:.4f} bits/dim"
                                                                          if "iw_bits_per_dim" in result else ""))
        if result["iw_images_from_earlier"]:
            print(f"              {result['iw_images_from_earlier']} of the {result['n_test_images']} images' bounds "
                  f"came from {result['iw_bounds_file']} (an earlier evaluation of these weights)")
        if result["iw_extended_from"]:
            fewer = result["iw_extended_from"]
            print(f"              the first {fewer['k']} samples of {fewer['images']} images came from {fewer['file']}")
    print(f"  latents     {result['active_units']} of {result['latent_dim']} active (posterior-mean variance > "
          f"{result['active_threshold']}), I(x; z) = {result['mutual_information']:.2f} nats (at most "
          f"{result['mutual_information_max']:.2f} on {result['mutual_information_images']} images), KL per "
          f"dimension up to {max(result['kl_per_dim']):.2f} nats")
    if "frechet_distance" in result:
        print(f"  Fréchet    {result['frechet_distance']:.2f} samples vs test images (floor, training vs test images: "
              f"{result['frechet_distance_floor']:.2f}; {result['frechet_images']} images, features of a classifier "
              f"with {100 * result['frechet_classifier_accuracy']:.2f} % test accuracy)")
    if "factor_recovery" in result:
        print("  factors     " + ", ".join(f"{k} {v:.3f}" for k, v in result["factor_recovery"].items())
              + "  (linear read-out from the latent means)")
    if "pictures" in result:
        print(f"  pictures in {run.path / 'eval'}: {', '.join(result['pictures'])}")
    return 0


def cmd_artifacts(args: argparse.Namespace) -> int:
    from .evaluation.report import artifact_scores
    from .evaluation.runs import open_run

    run = open_run(args.run, args.device, args.model)
    with RunLock(run.path, "convae artifacts"):
        result = artifact_scores(run, n=args.images)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{run.path} (model {run.config.model}): checkerboard score = share of spectral energy at the stride-4 "
          f"alias frequencies / the same for test images (1.0 = like the data)")
    for what in ("samples", "reconstructions"):
        r = result[what]
        print(f"  {what:<16} per image {r['score']:6.2f}   of the mean image {r['score_of_mean']:6.2f}   "
              f"polyphase spread {r['polyphase_spread']:.4f} (data {r['polyphase_spread_data']:.4f})")
    print(f"  picture: {run.path / 'eval' / 'artifacts.png'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .evaluation.compare import compare

    result = compare(args)
    print(result["table"])
    out = Path(args.out)
    print(f"\ntable: {out / 'compare.md'} (and compare.json); pictures: {out / 'panel.png'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reporting.html import RunFiles, write_report

    if len(args.runs) > 1 and not args.out:
        raise ConfigError("--out: needed when the report covers several runs (one run's goes to RUN/report.html)")
    if args.iw_samples < 0:
        raise ConfigError(f"--iw-samples: must be >= 0, got {args.iw_samples}")
    runs = [RunFiles.read(r) for r in args.runs]  # every folder checked before any work
    if args.eval:
        from .evaluation.report import artifact_scores, evaluate_run
        from .evaluation.runs import open_run

        for files in runs:
            if files.evaluation is None or files.artifacts is None:
                run = open_run(files.path, args.device)
            if files.evaluation is None:
                print(f"evaluating {files.path} (test -ELBO{f', IW bound K = {args.iw_samples}' if args.iw_samples else ''}, "
                      "pictures) ...", file=sys.stderr)
                evaluate_run(run, iw_samples=args.iw_samples, progress=sys.stderr.isatty())
            if files.artifacts is None:
                print(f"scoring checkerboard artifacts of {files.path} ...", file=sys.stderr)
                artifact_scores(run)
    out = Path(args.out) if args.out else runs[0].path / "report.html"
    print(f"writing {out} ...", file=sys.stderr)
    write_report([r.path for r in runs], out)
    print(f"report: {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .inference import load

    model = load(args.run, args.device)
    try:
        images = model.sample(args.n, label=args.label, seed=args.seed)
    except ConfigError as e:
        raise ConfigError(f"--label {args.label}: {e}" if args.label is not None else str(e)) from None
    write_images(images, Path(args.out))
    print(f"{args.n} samples" + (f" of class {args.label}" if args.label is not None else "") + f": {args.out}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from .data import load_data
    from .evaluation.runs import check_labels
    from .inference import load

    model = load(args.run, args.device)
    if args.data:
        data = load_data(args.data, image_size=model.config.image_size, channels=str(model.channels),
                         resize=model.config.resize, progress=False)
    else:
        data = model.run.data()
    split = data.test_images if args.split == "test" else data.train_images
    labels = data.test_labels if args.split == "test" else data.train_labels
    check_labels(data, model.classes, model.run.path)
    mus, sigmas = [], []
    for start in range(0, len(split), 1000):
        mu, sigma = model.encode(split[start:start + 1000], labels[start:start + 1000] if model.classes else None)
        mus.append(mu), sigmas.append(sigma)
    out = Path(args.out)
    buffer = io.BytesIO()
    np.savez(buffer, mu=torch.cat(mus).numpy(), sigma=torch.cat(sigmas).numpy(), labels=labels.cpu().numpy())
    atomic_write_bytes(out, buffer.getvalue())
    print(f"{len(split)} {args.split} images encoded ({model.latent_dim} dimensions): {out} (mu, sigma, labels)")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .inference import load

    model = load(args.run, args.device)
    try:
        with np.load(args.latents, allow_pickle=False) as f:
            key = "z" if "z" in f.files else "mu" if "mu" in f.files else None
            if key is None:
                raise ConfigError(f"{args.latents}: holds no 'z' or 'mu' array (found {', '.join(f.files)})")
            z = f[key]
            labels = f["labels"] if model.classes and "labels" in f.files else None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{args.latents}: not a readable .npz file ({type(e).__name__}: {str(e)[:100]})") from None
    if args.label is not None:
        try:
            model.prepare_labels(args.label, 1)  # a class this model knows
        except ConfigError as e:
            raise ConfigError(f"--label {args.label}: {e}") from None
        labels = args.label
    elif model.classes and labels is None:
        raise ConfigError(f"{args.latents}: the model is conditional: the file needs a 'labels' array (as `convae "
                          "encode` writes), or give --label K")
    try:
        images = model.decode(z, labels)
    except ConfigError as e:
        raise ConfigError(f"{args.latents}: {e}") from None
    write_images(images, Path(args.out))
    print(f"{len(images)} images decoded from {args.latents}['{key}']: {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export
    from .inference import load

    model = load(args.run, "cpu")
    out = Path(args.out) if args.out else model.run.path / "export"
    for path in export(model, args.format, out):
        print(path)
    return 0


def write_images(images: torch.Tensor, out: Path) -> None:
    """To ``.npz`` (uint8 N x C x H x W, as `convae train --data` reads them) or to a picture (.png/.jpg)."""
    suffix = out.suffix.lower()
    if suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, images=(images.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        atomic_write_bytes(out, buffer.getvalue())
    elif suffix in (".png", ".jpg", ".jpeg"):
        from .visualisation import tile
        from PIL import Image

        grid = tile(images, columns=max(1, int(len(images) ** 0.5 + 0.999)))
        array = (grid.clamp(0, 1) * 255).round().to(torch.uint8)
        array = array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG" if suffix == ".png" else "JPEG")
        atomic_write_bytes(out, buffer.getvalue())
    else:
        raise ConfigError(f"--out {out}: give a .npz (arrays) or .png/.jpg (a grid) file name")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="convae", description="Convolutional variational autoencoders on images. "
                           "`convae train` reproduces the seed tutorial's experiment on the embedded MNIST.")
    parser.add_argument("--version", action="version", version=f"convae {__import__('convae').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    _train_parser(sub).set_defaults(handler=cmd_train)
    _bench_parser(sub).set_defaults(handler=cmd_bench)

    p = sub.add_parser("models", help="list the models with parameters, FLOPs and a constant-input dots test",
                       description="List the models: parameters, FLOPs per image, the constant-input test of their "
                                   "upsampling (0 = no dots), and the image shapes and likelihoods each accepts.")
    p.add_argument("--encoder", choices=["mlp", "conv", "resnet"], help="count with this encoder instead of each model's own")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models)

    for name, handler, text in (("eval", cmd_eval, "test-set ELBO, importance-weighted bound and pictures of a run"),
                                ("artifacts", cmd_artifacts, "checkerboard ('dots') scores and spectra of a run")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("run", help="a run folder written by convae train")
        p.add_argument("--model", metavar="NAME", dest="model",
                       help="a check, not a choice: refuse the run unless it is of model NAME")
        p.add_argument("--device", choices=DEVICES, default="auto", help="where to evaluate (default auto)")
        p.add_argument("--json", action="store_true", help="print the numbers as JSON")
        if name == "eval":
            p.add_argument("--iw-samples", type=int, default=0, metavar="K",
                           help="also the importance-weighted bound on -log p(x) with K samples (e.g. 1000); each "
                                "image's bound is kept in RUN/eval/iw_kK.json: an interrupted evaluation goes on from "
                                "there, and a larger K draws only the samples a kept smaller K lacks")
            p.add_argument("--test-limit", type=int, help="only the first N test images")
            p.add_argument("--no-pictures", action="store_true", help="numbers only: draw no pictures in RUN/eval")
            p.add_argument("--frechet", action="store_true",
                           help="also the Fréchet distance of 10,000 samples to the test images, in the features of "
                                "a classifier convae trains on the labelled training set (once; cached with its "
                                "accuracy), and the same distance between training and test images as the floor")
        else:
            p.add_argument("--images", type=int, default=2000, help="samples and test images to score (default 2000)")
        p.set_defaults(handler=handler)

    p = sub.add_parser("report", help="one self-contained HTML page of one or more runs (curves, pictures, tables)",
                       description="Write one HTML file that opens with no network: settings, training and test "
                                   "curves (several runs overlaid), per-epoch reconstructions with a slider, and what "
                                   "convae eval / artifacts found. `convae train` refreshes RUN/report.html itself.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by convae train")
    p.add_argument("--out", metavar="FILE", help="the HTML file (default RUN/report.html; needed for several runs)")
    p.add_argument("--eval", action="store_true", help="first run convae eval and artifacts where a run lacks them")
    p.add_argument("--iw-samples", type=int, default=0, metavar="K",
                   help="with --eval: also the importance-weighted bound with K samples")
    p.add_argument("--device", choices=DEVICES, default="auto", help="device for --eval (default auto)")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("sample", help="draw images from a trained model's prior",
                       description="Draw N images from the prior of the run's model (mean images of p(x|z)).")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("-n", type=int, default=64, help="how many (default 64)")
    p.add_argument("--out", required=True, help="grid.png (a picture) or samples.npz (uint8 N x C x H x W)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--label", metavar="K",
                   help="a model trained with --conditional: draw class K, a number or a class name (default: "
                        "classes drawn uniformly)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("encode", help="encode a data set with a trained model: latent means and sigmas",
                       description="Encode images with the run's encoder and write mu, sigma and labels to an .npz.")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("--data", metavar="SOURCE", help="as convae train --data (default: the run's own data)")
    p.add_argument("--split", choices=["test", "train"], default="test", help="which images (default test)")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    p.set_defaults(handler=cmd_encode)

    p = sub.add_parser("decode", help="decode latents (an .npz with z or mu) into images",
                       description="Decode latents from an .npz (array 'z', or 'mu' as `convae encode` writes).")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("latents", help="an .npz holding 'z' or 'mu' (N x latent_dim)")
    p.add_argument("--out", required=True, help="images.npz (uint8 N x C x H x W) or grid.png")
    p.add_argument("--label", metavar="K",
                   help="a model trained with --conditional: decode every latent as class K, a number or a class "
                        "name (default: the file's 'labels')")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    p.set_defaults(handler=cmd_decode)

    p = sub.add_parser("export", help="write a trained encoder and decoder as ONNX, TorchScript or safetensors",
                       description="Write the run's encoder (images -> mu, sigma) and decoder (z -> images) for use "
                                   "without convae, with model.json describing inputs and outputs.")
    p.add_argument("run", help="a run folder written by convae train")
    p.add_argument("--format", choices=["onnx", "torchscript", "safetensors"], required=True)
    p.add_argument("--out", metavar="DIR", help="folder for the files (default RUN/export)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("compare", help="train several models under one budget (or take finished runs) and tabulate",
                       description="Train each model for the same number of epochs (or take finished runs), then "
                                   "write one table and one panel of pictures.")
    p.add_argument("--models", nargs="+", default=["fc", "seed", "resize", "subpixel"], help="models to train")
    p.add_argument("--runs", nargs="+", help="finished run folders to compare instead of training")
    p.add_argument("--epochs", type=int, default=1, help="epochs per model (default 1)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--eval-batch-size", type=int, help="images per batch when evaluating the test set (default 500)")
    p.add_argument("--train-limit", type=int, help="use only the first N training images")
    p.add_argument("--data", default="mnist", metavar="SOURCE", help="as convae train --data (default mnist)")
    p.add_argument("--image-size", type=int, default=32, help="default 32")
    p.add_argument("--likelihood", default="bernoulli", help="as convae train --likelihood (default bernoulli)")
    p.add_argument("--encoder", choices=["mlp", "conv", "resnet"], help="one encoder for every model (default: each its own)")
    p.add_argument("--iw-samples", type=int, default=100, help="K of the importance-weighted bound (default 100)")
    p.add_argument("--out", default="runs/compare", help="folder for the runs, the table and the panel")
    p.add_argument("--device", choices=DEVICES, default="auto", help="default auto")
    p.set_defaults(handler=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _unrecognized(parser, args, unknown)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        code = args.handler(args)
        sys.stdout.flush()  # a full disk or a closed pipe behind stdout shows here, not at exit
        return code
    except KeyboardInterrupt:  # Ctrl-C outside training's own handler (loading data, evaluating, benchmarking)
        if _speaks():
            print(f"convae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, DataError, CheckpointError, ReportError) as e:
        if _speaks():
            print(f"convae {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DistributedError as e:  # each rank's own: say it wherever it happened
        print(f"convae {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OutOfMemory as e:
        return _fault(args, str(e), EXIT_OUT_OF_MEMORY)
    except FileSystemFault as e:
        return _fault(args, str(e), EXIT_FILESYSTEM)
    except RunBusy as e:
        return _fault(args, str(e), EXIT_BUSY)
    except OSError as e:  # a write anywhere outside training's own handling (eval, report, bench, stdout)
        return _fault(args, describe_os_error(e), EXIT_FILESYSTEM)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        return _fault(args, f"out of memory ({first_line(e)}); try a smaller --batch-size, --eval-batch-size, "
                            "--iw-samples or --image-size", EXIT_OUT_OF_MEMORY)


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> None:
    """argparse's "unrecognized arguments", said by the subcommand, with the nearest option it has."""
    import difflib

    command = getattr(args, "command", None)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    target = sub.choices.get(command, parser) if (sub and command) else parser
    options = [o for a in target._actions for o in a.option_strings]
    hint = ""
    flag = next((u.split("=")[0] for u in unknown if u.startswith("-")), None)
    if flag:
        close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
    target.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _fault(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr for an expected fault (the traceback too under CONVAE_DEBUG=1), and its exit code."""
    if debug():
        traceback.print_exc()
    if _speaks():
        try:
            print(f"convae {args.command}: error: {message}", file=sys.stderr)
        except OSError:
            pass
    if code == EXIT_FILESYSTEM:
        _silence_stdout()
    return code


def _silence_stdout() -> None:
    """stdout could not be written (e.g. > /dev/full): point it at /dev/null so Python's exit does not try again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
