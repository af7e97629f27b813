"""``convae eval``, ``convae artifacts`` and ``convae report``: numbers, pictures and a page of trained runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from ..config import DEVICES, IW_PRECISIONS
from ..errors import ConfigError
from .flags import speaks


def add_parsers(sub) -> None:
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
            p.add_argument("--iw-batch-size", type=int, default=100, metavar="N",
                           help="test images per batch of the IW bound, each batch with its noise generator: kept "
                                "bounds are reused only with the same N (default 100)")
            p.add_argument("--iw-precision", choices=IW_PRECISIONS, default="fp32",
                           help="the decoder's products for the IW bound: fp32 (the same numbers on every machine), "
                                "or bf16 (the latent densities, the likelihood and the sums stay float32/float64; "
                                "within 0.002 nats of fp32, measured; about 2x faster where the hardware multiplies "
                                "bfloat16 natively); auto = bf16 there (a GPU, a CPU with AMX or AVX-512 BF16), else "
                                "fp32. Bounds of each precision are kept apart (default fp32)")
            p.add_argument("--test-limit", type=int, help="only the first N test images")
            p.add_argument("--no-pictures", action="store_true", help="numbers only: draw no pictures in RUN/eval")
            p.add_argument("--frechet", action="store_true",
                           help="also the Fréchet distance of 10,000 samples to the test images, in the features of "
                                "a classifier convae trains on the labelled training set (once per data set, cached "
                                "with its accuracy in .convae-cache beside the run), and the same distance between "
                                "training and test images as the floor")
            p.add_argument("--frechet-samples", type=int, default=10_000, metavar="N",
                           help="samples (and test images) of the Fréchet distance (default 10000, the protocol's; "
                                "fewer is quicker and biased upward)")
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


def cmd_eval(args: argparse.Namespace) -> int:
    from ..runs import open_run
    from ..runtime import Runtime
    from ..evaluation.evaluate import evaluate_run
    from ..evaluation.likelihood import iw_bounds_path, iw_precision

    for name in ("iw_samples", "iw_batch_size", "frechet_samples"):
        least = {"iw_samples": 0, "iw_batch_size": 1, "frechet_samples": 2}[name]
        if getattr(args, name) < least:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= {least}, got {getattr(args, name)}")
    runtime = Runtime.from_environment()
    try:
        if runtime.distributed and not args.iw_samples:
            raise ConfigError("torchrun: convae eval shares only the importance-weighted bound among the processes; "
                              "give --iw-samples K (or run it as one process)")
        with contextlib.ExitStack() as held:
            error = None
            try:
                run = open_run(args.run, args.device, args.model, runtime.local_rank)
                if runtime.is_writer:  # RUN/eval/ is its own: a run in training goes on undisturbed
                    held.enter_context(evaluation_lock(run, "convae eval"))
            except Exception as e:  # every rank stops on rank 0's (or any rank's) error, none waits for a peer
                error = e
            runtime.agree_on_errors(error)
            try:
                result = evaluate_run(run, iw_samples=args.iw_samples, test_limit=args.test_limit,
                                      pictures=not args.no_pictures, progress=True, frechet=args.frechet,
                                      runtime=runtime, iw_batch_size=args.iw_batch_size,
                                      frechet_samples=args.frechet_samples, iw_precision=args.iw_precision)
            except KeyboardInterrupt:
                kept = iw_bounds_path(run.path, args.iw_samples, iw_precision(run.model, args.iw_precision))
                if args.iw_samples and kept.is_file() and speaks():
                    print(f"convae eval: the IW bounds of the images done so far are kept in {kept}: the same "
                          "command goes on from there", file=sys.stderr)
                raise
    finally:
        runtime.close()
    if not runtime.is_writer:
        return 0
    print(json.dumps(result, indent=2) if args.json else "\n".join(describe_evaluation(run, result)))
    return 0


def evaluation_lock(run, what: str):
    """The lock of RUN/eval/ (one evaluation writes it at a time), to take with ``with``; a run that is still
    training is not disturbed, and the user is told which checkpoint is evaluated."""
    from ..runs import RunLock

    training = RunLock(run.path, "convae train").holder()
    if training is not None:
        print(f"{what}: {run.path} is training (process {training.get('pid')} on {training.get('host')}, since "
              f"{training.get('since')}): evaluating its newest checkpoint, step {run.step}, into "
              f"{run.dir.eval_dir} (the training goes on undisturbed)", file=sys.stderr)
    run.dir.eval_dir.mkdir(exist_ok=True)
    return RunLock(run.dir.eval_dir, what)


def describe_evaluation(run, result: dict) -> list[str]:
    """``convae eval``'s lines for a user."""
    lines = [f"{run.path} (model {run.config.model}, step {run.step}); {result['protocol']}"]
    beside = (f"entropy floor {result['entropy_floor']:.2f}" if result["entropy_floor"] is not None else
              f"{result['test_bits_per_dim']:.4f} bits/dim" if "test_bits_per_dim" in result else
              f"{result['likelihood']} likelihood")
    lines.append(f"  test -ELBO{' (given the label)' if result['conditional'] else ''}  "
                 f"{result['test_neg_elbo']:.2f} nats/image = L_likelihood {result['test_L_likelihood']:.2f} + L_KL "
                 f"{result['test_L_KL']:.2f}   ({beside}, {result['n_test_images']} images)")
    if "iw_nll" in result:
        given = " | label" if result["conditional"] else ""
        lines.append(f"  IW bound    -log p(x{given}) <= {result['iw_nll']:.2f} +- {result['iw_nll_std_error']:.2f} "
                     f"nats/image (K = {result['iw_samples']}; {result['arithmetic']}, decoder in "
                     f"{result['iw_precision']})"
                     + (f" = {result['iw_bits_per_dim']:.4f} bits/dim" if "iw_bits_per_dim" in result else ""))
        if result["iw_images_from_earlier"]:
            lines.append(f"              {result['iw_images_from_earlier']} of the {result['n_test_images']} images' "
                         f"bounds came from {result['iw_bounds_file']} (an earlier evaluation of these weights)")
        if result["iw_extended_from"]:
            fewer = result["iw_extended_from"]
            lines.append(f"              the first {fewer['k']} samples of {fewer['images']} images came from "
                         f"{fewer['file']}")
    kl_said = (f"KL per dimension up to {max(result['kl_per_dim']):.2f} nats" if result.get("kl") != "monte carlo" else
               f"KL a Monte-Carlo estimate ({result.get('prior')} prior, {result.get('posterior')} posterior)")
    if result.get("active_units") is None:
        lines.append(f"  latents     {result['latent_dim']} dimensions; {result['latent_statistics']}; {kl_said}")
    else:
        lines.append(f"  latents     {result['active_units']} of {result['latent_dim']} active (posterior-mean variance "
                     f"> {result['active_threshold']}), I(x; z) = {result['mutual_information']:.2f} nats (at most "
                     f"{result['mutual_information_max']:.2f} on {result['mutual_information_images']} images), "
                     + kl_said + ("" if result.get("prior") in (None, "StandardNormal") or result.get("kl") ==
                                  "monte carlo" else f" (against its {result['prior']} prior)"))
    if result.get("kl_flag"):
        lines.append(f"  WARNING     {result['kl_flag']}")
    check = result.get("elbo_check")
    if check:
        lines.append(f"  checked     the -ELBO is its densities' (first {check['images']} images: "
                     f"{check['reported_neg_elbo']:.2f} reported, {check['densities_neg_elbo']:.2f} from "
                     f"{check['samples']} samples of log q - log p - log p(x|z); difference {check['difference']:.2f} "
                     f"+- {check['std_error']:.2f})")
    for group in result.get("groups") or []:
        lines.append(f"              {group['group']}: {group['active_units']} of {group['units']} units active, KL "
                     f"{group['kl']:.2f} nats")
    if "frechet_distance" in result:
        lines.append(f"  Fréchet    {result['frechet_distance']:.2f} samples vs test images (floor, training vs test "
                     f"images: {result['frechet_distance_floor']:.2f}; {result['frechet_images']} images, features "
                     f"of a classifier with {100 * result['frechet_classifier_accuracy']:.2f} % test accuracy)")
    if "factor_recovery" in result:
        lines.append("  factors     " + ", ".join(f"{k} {v:.3f}" for k, v in result["factor_recovery"].items())
                     + "  (linear read-out from the latent means)")
    if "pictures" in result:
        lines.append(f"  pictures in {run.dir.eval_dir}: {', '.join(result['pictures'])}")
    lines.append("  time        " + describe_time(result))
    return lines


def describe_time(result: dict) -> str:
    """Where the evaluation's time went, and what a larger K of the IW bound would cost."""
    from ..progress import duration

    t = result["seconds"]
    parts = []
    if "IW bound" in t:
        rate = result.get("iw_pairs_per_second")
        per_k = t["IW bound"] / result["iw_samples"]
        parts.append(f"IW bound {duration(t['IW bound'])} (encoder {duration(t.get('encoder', 0))}, decoder "
                     f"{duration(t.get('decoder', 0))}" + (f"; {rate:,.0f} (image, sample) pairs/s, so about "
                     f"{duration(per_k * 5000)} for K = 5000 from nothing" if rate else "") + ")")
    parts += [f"{part} {duration(t[part])}" for part in ("test ELBO", "ELBO check", "latent usage") if part in t]
    if "Fréchet distance" in t:
        parts.append(f"Fréchet distance {duration(t['Fréchet distance'])} (classifier "
                     f"{duration(t.get('feature classifier', 0))}, samples {duration(t.get('samples', 0))}, "
                     f"features {duration(t.get('features', 0))})")
    if "pictures" in t:
        parts.append(f"pictures {duration(t['pictures'])}")
    return ", ".join(parts)


def cmd_artifacts(args: argparse.Namespace) -> int:
    from ..evaluation.artifacts import artifact_scores
    from ..runs import open_run

    run = open_run(args.run, args.device, args.model)
    with evaluation_lock(run, "convae artifacts"):
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
    print(f"  picture: {run.dir.eval_file('artifacts.png')}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..reporting.html import RunFiles, write_report

    if len(args.runs) > 1 and not args.out:
        raise ConfigError("--out: needed when the report covers several runs (one run's goes to RUN/report.html)")
    if args.iw_samples < 0:
        raise ConfigError(f"--iw-samples: must be >= 0, got {args.iw_samples}")
    runs = [RunFiles.read(r) for r in args.runs]  # every folder checked before any work
    if args.eval:
        from ..evaluation.artifacts import artifact_scores
        from ..evaluation.evaluate import evaluate_run
        from ..runs import open_run

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
