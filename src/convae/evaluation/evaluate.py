"""``convae eval``: the numbers of one run (test -ELBO, IW bound, latent usage, sample quality) and its pictures,
written to RUN/eval/eval.json."""

from __future__ import annotations

import torch

from ..data import EvalImages, cache_for, evaluation_images, shapes_factors
from ..errors import ConfigError, UntrustedFigure, refuse_non_finite
from ..objectives import bits_per_dim
from ..progress import Stopwatch
from ..runs import Run
from ..runtime import Runtime
from .elbo import disagreement_line, elbo_check, entropy_floor, evaluate_neg_elbo
from .latents import latent_usage, posterior_parameters, usage_by_group
from .likelihood import IW_BATCH, iw_bounds_path, kept_iw_bound
from .pictures import class_names, draw_pictures

FRECHET_SAMPLES = 10_000  # the protocol's sample count (and as many test images); --frechet-samples


def evaluate_run(run: Run, *, iw_samples: int = 0, test_limit: int | None = None, pictures: bool = True,
                 progress: bool = False, frechet: bool = False, runtime: Runtime | None = None,
                 iw_batch_size: int = IW_BATCH, frechet_samples: int = FRECHET_SAMPLES,
                 iw_precision: str = "fp32") -> dict:
    """Everything ``convae eval`` reports for ``run`` (and writes to RUN/eval/), with the seconds each part took
    (``seconds``). Under torchrun the ranks share the IW bound, the costly part; the rest is rank 0's, and the other
    ranks get an empty dict."""
    runtime = runtime or Runtime()
    watch = Stopwatch(next(run.model.parameters()).device)
    data = run.data(test_limit)
    test_set = run.test_set(data)
    if iw_samples:
        with watch("IW bound"):
            iw, resumed, extended = kept_iw_bound(run, test_set, iw_samples, progress, runtime, iw_batch_size, watch,
                                                  iw_precision)
    if not runtime.is_writer:
        return {}
    with watch("test ELBO"):
        elbo = evaluate_neg_elbo(run.model, test_set, batch_size=run.config.eval_batch_size, seed=run.config.seed + 1)
    where = f"{run.path} at step {run.step}"
    refuse_non_finite({"the test -ELBO": elbo.neg_elbo, "its L_likelihood": elbo.likelihood, "its L_KL": elbo.kl,
                       "the IW bound": iw.nll if iw_samples else None}, where)
    with watch("ELBO check"):  # the reported -ELBO is the -ELBO of the model's own densities, or it is refused
        check = elbo_check(run.model, test_set)
    refuse_non_finite({"the densities' -ELBO": check["densities_neg_elbo"]}, where)
    if not check["agrees"]:
        raise UntrustedFigure(f"{where}: {disagreement_line(check, run.config.model)}")
    protocol = describe_protocol(run, data, test_set)
    if run.model.classes:
        protocol += (f"; conditional on the label ({run.model.classes} classes): the bounds are on log p(x | label), "
                     "not comparable with an unconditional model's log p(x)")
    result = {"run": str(run.path), "model": run.config.model, "step": run.step, "protocol": protocol,
              "arithmetic": arithmetic(run.model),
              "n_test_images": len(test_set), "test_neg_elbo": elbo.neg_elbo, "test_L_likelihood": elbo.likelihood,
              "test_L_KL": elbo.kl, "likelihood": run.model.likelihood.name,
              "conditional": bool(run.model.classes), "elbo_check": check, "batchnorm": run.batchnorm,
              "code_changed": run.code_changed,
              "entropy_floor": entropy_floor(test_set) if run.model.likelihood.entropy_floor else None}
    if run.model.likelihood.discrete:
        result["test_bits_per_dim"] = bits_per_dim(elbo.neg_elbo, test_set.dims)
    if iw_samples:
        result.update({"iw_nll": iw.nll, "iw_samples": iw.k, "iw_nll_std_error": iw.std_error,
                       "iw_precision": iw.precision,
                       "iw_images_from_earlier": resumed, "iw_extended_from": extended,
                       "iw_bounds_file": str(iw_bounds_path(run.path, iw.k, iw.precision))})
        if run.model.likelihood.discrete:
            result["iw_bits_per_dim"] = bits_per_dim(iw.nll, test_set.dims)
    with watch("latent usage"):
        mu, sigma = posterior_parameters(run.model, test_set)
        if run.model.latent_statistics_apply:  # they read q(z | x) as the diagonal Gaussian N(mu, sigma^2)
            result.update(latent_usage(mu, sigma))
        else:
            result.update(latent_dim=run.model.latent_dim, active_units=None, mutual_information=None,
                          latent_statistics=f"active units and I(x; z) not measured: the posterior "
                                            f"({type(run.model.posterior).__name__}) is not a diagonal Gaussian")
        # the KL of each unit against the model's own prior (a closed form, or one Monte-Carlo unit): the ELBO's
        result.update(kl_per_dim=elbo.kl_per_dim, kl_std_error=elbo.kl_std_error, **run.model.describe_densities())
        flag = impossible_kl(elbo, run.model.kl_estimate)
        if flag:
            result["kl_flag"] = flag
        groups = usage_by_group(run.model, mu, elbo.kl_per_dim)
        if groups is not None:
            result["groups"] = groups
        factors = shapes_factors(data)
        if factors is not None:  # generated shapes: how much of each known factor a linear read-out recovers
            from .factors import factor_recovery

            n_train, n = len(data.train_images), min(len(data.train_images), 5000)
            train_set = evaluation_images(data.train_images[:n], data.levels, run.config, data.train_labels[:n])
            result["factor_recovery"] = factor_recovery(run.model, train_set, test_set, factors[:n],
                                                        factors[n_train:n_train + len(test_set)])
    if frechet:
        with watch("Fréchet distance"):
            result.update(frechet_scores(run, data, test_set, progress, frechet_samples, watch))
    if pictures:
        with watch("pictures"):
            result["pictures"] = draw_pictures(run, test_set, data.test_labels, run.dir.eval_dir,
                                               class_names(data, max(run.model.classes, data.class_count())))
    result["seconds"] = watch.seconds
    if iw_samples and watch.seconds.get("decoder"):
        drawn = (len(test_set) - resumed) * iw.k - (extended["images"] * extended["k"] if extended else 0)
        result["iw_pairs_per_second"] = drawn / watch.seconds["IW bound"] if drawn > 0 else None
    run.dir.write_eval("eval.json", result)  # always the numbers just printed
    return result


def impossible_kl(elbo, estimate: str) -> str | None:
    """A Monte-Carlo KL whose mean is below zero by more than three standard errors: impossible for a KL, so its
    estimate (log q - log p of one sample) is wrong somewhere (a posterior's log_prob, a prior's normalisation)."""
    if estimate == "monte carlo" and elbo.kl_std_error is not None and elbo.kl < -3 * elbo.kl_std_error:
        return (f"the Monte-Carlo KL averages {elbo.kl:.3f} +- {elbo.kl_std_error:.3f} nats, below zero by more than "
                "3 standard errors: a KL cannot be negative; check the posterior's log_prob and the prior's "
                "normalisation")
    return None


def describe_protocol(run: Run, data, test_set: EvalImages) -> str:
    """What the numbers are of, named: the data set, the binarization, the sizes, the likelihood; and with what they
    may be compared."""
    size, stored = run.config.image_size, data.shape[-1]
    where = data.name if data.name == run.config.source else f"{data.name} ({run.config.source})"
    if run.config.binarize == "dynamic":
        resized = "padded" if run.config.resize_mode == "pad" else "resized"
        return (f"binarized {where}: trained on dynamically binarized images, tested on one fixed binarization (seed "
                f"0), {stored}x{stored} {resized} to {size}x{size}"
                + ("; the protocol of published binarized-MNIST NLLs" if data.name == "mnist" else
                   "; compare with results on binarized " + data.name + " by this protocol"))
    kind = "colour" if test_set.images.shape[1] == 3 else "gray"
    return (f"{run.model.likelihood.name} likelihood on {kind} {size}x{size} images of {where}; "
            + ("not comparable with published binarized-MNIST NLLs" if data.name == "mnist" else
               f"compare only with runs on {data.name} with the same likelihood and size"))


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


def frechet_scores(run: Run, data, test_set: EvalImages, progress: bool = False, samples: int = FRECHET_SAMPLES,
                   watch: Stopwatch | None = None) -> dict:
    """Fréchet distance of ``samples`` of the run's samples to as many test images, and its floor (training vs test
    images), in the feature space of the classifier cached for this data (in the run's cache, trained on first use,
    on the labelled images the run trained on); with the protocol, to say what the number is of."""
    from .frechet import CLASSIFIER_VERSION, FEATURES, cached_classifier, sample_quality

    if data.classes is None and int(data.train_labels.max()) == int(data.train_labels.min()):
        raise ConfigError(f"--frechet: {run.config.source} has no labels to train the feature classifier on")
    if samples < 2:
        raise ConfigError(f"--frechet-samples: at least 2 (a covariance needs them), got {samples}")
    watch = watch or Stopwatch()
    device = next(run.model.parameters()).device
    data = data.subset(run.config.train_limit, None)  # the training set the run saw
    gray_train = EvalImages(data.train_images, data.levels, run.config.image_size, run.config.resize_mode,
                            run.config.quantize)
    with watch("feature classifier"):
        classifier = cached_classifier(cache_for(run.config, run.path), gray_train, data.train_labels, test_set,
                                       data.test_labels, binarize=run.config.binarize, device=device,
                                       progress=progress)
    train_set = evaluation_images(data.train_images, data.levels, run.config, data.train_labels)
    scores = sample_quality(run.model, classifier.model, test_set, train_set, n=samples,
                            binary=run.config.binarize == "dynamic", progress=progress, watch=watch)
    protocol = {"samples": scores["frechet_images"], "test_images": scores["frechet_images"],
                "features": f"{FEATURES} units of convae's classifier (version {CLASSIFIER_VERSION}) trained on the "
                            f"run's {len(gray_train)} labelled training images",
                "classifier_test_accuracy": classifier.accuracy,
                "binary": run.config.binarize == "dynamic"}
    return {**scores, "frechet_classifier_accuracy": classifier.accuracy,
            "frechet_classifier": str(classifier.path), "frechet_protocol": protocol}
