"""``convae eval``: the numbers of one run (test -ELBO, IW bound, latent usage, sample quality) and its pictures,
written to RUN/eval/eval.json."""

from __future__ import annotations

import torch

from ..data import EvalImages, cache_root, evaluation_images, shapes_factors
from ..errors import ConfigError
from ..objectives import bits_per_dim
from ..runs import Run
from ..runtime import Runtime
from .elbo import entropy_floor, evaluate_neg_elbo
from .latents import latent_usage, posterior_parameters
from .likelihood import IW_BATCH, iw_bounds_path, kept_iw_bound
from .pictures import class_names, draw_pictures


def evaluate_run(run: Run, *, iw_samples: int = 0, test_limit: int | None = None, pictures: bool = True,
                 progress: bool = False, frechet: bool = False, runtime: Runtime | None = None,
                 iw_batch_size: int = IW_BATCH) -> dict:
    """Everything ``convae eval`` reports for ``run`` (and writes to RUN/eval/). Under torchrun the ranks share the
    IW bound, the costly part; the rest is rank 0's, and the other ranks get an empty dict."""
    runtime = runtime or Runtime()
    data = run.data(test_limit)
    test_set = run.test_set(data)
    if iw_samples:
        iw, resumed, extended = kept_iw_bound(run, test_set, iw_samples, progress, runtime, iw_batch_size)
    if not runtime.is_writer:
        return {}
    elbo = evaluate_neg_elbo(run.model, test_set, batch_size=run.config.eval_batch_size, seed=run.config.seed + 1)
    protocol = ("binarized: trained on dynamically binarized images, tested on one fixed binarization (seed 0), "
                f"28x28 {'padded' if run.config.resize_mode == 'pad' else 'resized'} to {run.config.image_size}x{run.config.image_size}"
                if run.config.binarize == "dynamic" else
                f"{run.model.likelihood.name} likelihood on {'colour' if test_set.images.shape[1] == 3 else 'gray'} "
                f"{run.config.image_size}x{run.config.image_size} images ({run.config.source}); "
                "not comparable with published binarized-MNIST NLLs")
    if run.model.classes:
        protocol += (f"; conditional on the label ({run.model.classes} classes): the bounds are on log p(x | label), "
                     "not comparable with an unconditional model's log p(x)")
    result = {"run": str(run.path), "model": run.config.model, "step": run.step, "protocol": protocol,
              "arithmetic": arithmetic(run.model),
              "n_test_images": len(test_set), "test_neg_elbo": elbo.neg_elbo, "test_L_likelihood": elbo.likelihood,
              "test_L_KL": elbo.kl, "likelihood": run.model.likelihood.name,
              "conditional": bool(run.model.classes),
              "entropy_floor": entropy_floor(test_set) if run.model.likelihood.entropy_floor else None}
    if run.model.likelihood.discrete:
        result["test_bits_per_dim"] = bits_per_dim(elbo.neg_elbo, test_set.dims)
    if iw_samples:
        result.update({"iw_nll": iw.nll, "iw_samples": iw.k, "iw_nll_std_error": iw.std_error,
                       "iw_images_from_earlier": resumed, "iw_extended_from": extended,
                       "iw_bounds_file": str(iw_bounds_path(run.path, iw.k))})
        if run.model.likelihood.discrete:
            result["iw_bits_per_dim"] = bits_per_dim(iw.nll, test_set.dims)
    result.update(latent_usage(*posterior_parameters(run.model, test_set)))
    factors = shapes_factors(data)
    if factors is not None:  # generated shapes: how much of each known factor a linear read-out recovers
        from .factors import factor_recovery

        n_train, n = len(data.train_images), min(len(data.train_images), 5000)
        train_set = evaluation_images(data.train_images[:n], data.levels, run.config, data.train_labels[:n])
        result["factor_recovery"] = factor_recovery(run.model, train_set, test_set, factors[:n],
                                                    factors[n_train:n_train + len(test_set)])
    if frechet:
        result.update(frechet_scores(run, data, test_set, progress))
    if pictures:
        result["pictures"] = draw_pictures(run, test_set, data.test_labels, run.dir.eval_dir,
                                           class_names(data, run.model.classes))
    run.dir.write_eval("eval.json", result)  # always the numbers just printed
    return result


def arithmetic(model: torch.nn.Module) -> str:
    """How the evaluation computes: the parameters' dtype, and on CUDA whether convolutions and matrix products may
    round their inputs to TF32 (10-bit mantissa; PyTorch's default allows it for cuDNN convolutions)."""
    p = next(model.parameters())
    described = str(p.dtype).removeprefix("torch.")
    if p.device.type == "cuda" and p.dtype == torch.float32:
        tf32 = [what for what, allowed in (("convolutions", torch.backends.cudnn.allow_tf32),
                                           ("matrix products", torch.backends.cuda.matmul.allow_tf32)) if allowed]
        described += f", {' and '.join(tf32)} in TF32" if tf32 else ", no TF32"
    return described


def frechet_scores(run: Run, data, test_set: EvalImages, progress: bool = False) -> dict:
    """Fréchet distance of the run's samples to the test images, and its floor (training vs test images), in the
    feature space of the classifier cached for this data (trained on first use, on the labelled images the run
    trained on)."""
    from .frechet import cached_classifier, sample_quality

    if data.classes is None and int(data.train_labels.max()) == int(data.train_labels.min()):
        raise ConfigError(f"--frechet: {run.config.source} has no labels to train the feature classifier on")
    device = next(run.model.parameters()).device
    data = data.subset(run.config.train_limit, None)  # the training set the run saw
    gray_train = EvalImages(data.train_images, data.levels, run.config.image_size, run.config.resize_mode,
                            run.config.quantize)
    classifier = cached_classifier(cache_root(run.config.cache_dir), gray_train, data.train_labels, test_set,
                                   data.test_labels, binarize=run.config.binarize, device=device, progress=progress)
    train_set = evaluation_images(data.train_images, data.levels, run.config, data.train_labels)
    scores = sample_quality(run.model, classifier.model, test_set, train_set, binary=run.config.binarize == "dynamic")
    return {**scores, "frechet_classifier_accuracy": classifier.accuracy,
            "frechet_classifier": str(classifier.path)}
