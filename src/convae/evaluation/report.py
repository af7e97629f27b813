"""``convae eval`` and ``convae artifacts``: numbers and pictures for one run."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from ..files import atomic_write_json
from ..objectives import bits_per_dim
from ..visualisation import latent_scatter, loss_curves, rows_grid, spectrum_panel
from .artifacts import checkerboard_scores, flat_response, power_spectrum
from ..data import cache_root, shapes_factors
from .elbo import EvalImages, entropy_floor, evaluate_neg_elbo, evaluation_images
from .latents import latent_usage, posterior_parameters
from .likelihood import IWResult, importance_weighted_nll
from ..runtime import Runtime
from .runs import Run

# The seed decoder's last layer has stride 4; the others upsample x2 three times, and a x2 pattern also has its
# energy at multiples of N/4, so one set of alias frequencies serves every decoder.
ALIAS_STRIDE = 4
IW_BATCH = 100  # test images per batch of the IW bound (and per save of its progress)
IW_SEED = 0


def frechet_scores(run: Run, data, test_set: EvalImages, progress: bool = False) -> dict:
    """Fréchet distance of the run's samples to the test images, and its floor (training vs test images), in the
    feature space of the classifier cached for this data (trained on first use, on the labelled images the run
    trained on)."""
    from ..config import ConfigError
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


@torch.no_grad()
def latent_means(model, data: EvalImages, batch_size: int = 1000) -> torch.Tensor:
    p = next(model.parameters())
    return torch.cat([model.encode(data.floats(s, s + batch_size, p.dtype, p.device),
                                   data.labels_of(s, s + batch_size, p.device))[0]
                      for s in range(0, len(data), batch_size)])


def class_names(data, classes: int) -> list[str]:
    """The names of a labelled source's classes (a folder's sub-folders), else the label numbers."""
    names = data.classes or []
    return [names[k] if k < len(names) else str(k) for k in range(classes)]


@torch.no_grad()
def draw_pictures(run: Run, test_set: EvalImages, labels: torch.Tensor, folder: Path,
                  names: list[str] | None = None) -> list[str]:
    """Samples, reconstructions, interpolations, traversals, the latent PCA and the loss curves; for a conditional
    model also samples per class (one row each, named by ``names``). Interpolations and traversals of a
    conditional model keep the label of the image they start from."""
    model, p = run.model, next(run.model.parameters())
    generator = torch.Generator(device=p.device).manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{run.config.model} ({run.path.name}, step {run.step})"
    written = []

    def save(fn, file, *args, **kw):
        fn(*args, folder / file, **kw)
        written.append(file)

    samples = model.sample(64, generator=generator)
    save(rows_grid, "samples.png", list(samples.view(8, 8, *samples.shape[1:])), title=f"samples from the prior: {name}")
    if model.classes:
        shown = min(model.classes, 20)
        rows = [model.sample(10, generator, labels=torch.full((10,), k, device=p.device)) for k in range(shown)]
        save(rows_grid, "samples_by_class.png", rows, labels=(names or [str(k) for k in range(shown)])[:shown],
             title=f"samples of each class (z from the prior, one row per label): {name}")

    def label_of(i: int, n: int) -> torch.Tensor | None:
        return None if test_set.labels is None else test_set.labels_of(i, i + 1, p.device).expand(n)

    x = test_set.floats(0, 10, p.dtype, p.device)
    recon = model.reconstruct(x, generator, labels=test_set.labels_of(0, 10, p.device))
    save(rows_grid, "reconstructions.png", [x, recon], labels=["input", "recon."], title=f"test reconstructions: {name}")

    mu = latent_means(model, test_set)
    pairs = min(8, len(mu) // 2)  # fewer where the test set is small
    a, b = mu[:pairs], mu[pairs:2 * pairs]
    t = torch.linspace(0, 1, 10, device=p.device, dtype=p.dtype)
    rows = [model.generate(a[i] + t[:, None] * (b[i] - a[i]), generator, labels=label_of(i, len(t)))
            for i in range(pairs)]
    if rows:
        save(rows_grid, "interpolations.png", rows, title=f"latent interpolations between test images: {name}")

    active = mu.var(0).argsort(descending=True)[:8]
    values = torch.linspace(-3, 3, 11, device=p.device, dtype=p.dtype)
    base = mu[0]
    rows = []
    for d in active.tolist():
        z = base.repeat(len(values), 1)
        z[:, d] = values
        rows.append(model.generate(z, generator, labels=label_of(0, len(values))))
    save(rows_grid, "traversals.png", rows, labels=[f"z{d}" for d in active.tolist()],
         title=f"traversals -3..3 of the most active latent dimensions: {name}")

    centred = (mu - mu.mean(0)).float().cpu()
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    save(latent_scatter, "latent_pca.png", centred @ v[:2].T, labels[:len(centred)],
         title=f"PCA of test-set latent means: {name}")
    if run.metrics:
        save(loss_curves, "loss_curves.png", run.metrics, title=name)
    return written


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


def iw_bounds_path(run_path: Path, k: int) -> Path:
    return run_path / "eval" / f"iw_k{k}.json"


def kept_iw_bound(run: Run, test_set: EvalImages, k: int, progress: bool = False,
                  runtime: Runtime | None = None) -> tuple[IWResult, int, dict | None]:
    """The IW bound with K samples, each image's bound kept in RUN/eval/iw_kK.json after every batch: an evaluation
    stopped by Ctrl-C or a lost machine goes on from there when run again on the same weights, and a finished one
    is read back. Kept bounds of a smaller K (the largest there is) give the first samples of the images they cover:
    only the rest are drawn. Under torchrun the ranks share the batches and rank 0 keeps the file. Returns the
    result, how many images' bounds came whole from the file, and which smaller K was extended (None if none)."""
    runtime = runtime or Runtime()
    path, key, done, fewer, extended = iw_bounds_path(run.path, k), {}, [], (0, []), None
    if runtime.is_writer:  # rank 0 alone reads and writes the files, and tells the others where to begin
        key = iw_bounds_key(run, test_set, k)
        done = read_kept_bounds(path, key, len(test_set))
        if len(done) < len(test_set):
            fewer = kept_bounds_of_fewer_samples(run.path, key, len(test_set))
        path.parent.mkdir(exist_ok=True)
        if 0 < len(done) < len(test_set):  # said at the start: the rest may take hours
            print(f"IW bound, K = {k}: going on from the bounds of {len(done)} of {len(test_set)} images kept in "
                  f"{path}", file=sys.stderr, flush=True)
        if len(fewer[1]) > len(done):
            extended = {"k": fewer[0], "images": len(fewer[1]) - len(done),
                        "file": str(iw_bounds_path(run.path, fewer[0]))}
            print(f"IW bound, K = {k}: the first {extended['k']} samples of {extended['images']} images come from "
                  f"{extended['file']}; drawing the other {k - fewer[0]}", file=sys.stderr, flush=True)
    done, fewer = runtime.broadcast((done, fewer))
    iw = importance_weighted_nll(run.model, test_set, k, batch_size=IW_BATCH, seed=IW_SEED, progress=progress,
                                 done=done, save=lambda bounds: atomic_write_json(path, {**key, "bounds": bounds}),
                                 fewer=fewer, runtime=runtime)
    return iw, len(done), extended


def iw_bounds_key(run: Run, test_set: EvalImages, k: int) -> dict:
    """What kept bounds are of: these weights, these test images (and labels), these settings."""
    images = hashlib.sha256(test_set.images.cpu().contiguous().numpy().tobytes())
    if test_set.labels is not None:
        images.update(test_set.labels.cpu().contiguous().numpy().tobytes())
    return {"step": run.step, "weights_sha256": run.weights_sha256, "test_images_sha256": images.hexdigest(),
            "k": k, "seed": IW_SEED, "batch_size": IW_BATCH, "n_images": len(test_set)}


def read_kept_bounds(path: Path, key: dict, n_images: int) -> list[float]:
    """The bounds kept in ``path`` if they are of ``key`` and end a batch; else none (the file is then
    overwritten from the first image)."""
    try:
        saved = json.loads(path.read_text())
        bounds = [float(b) for b in saved["bounds"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # none yet, or not a file of ours
    ends_a_batch = len(bounds) == n_images or (len(bounds) < n_images and len(bounds) % key["batch_size"] == 0)
    return bounds if ends_a_batch and {name: saved.get(name) for name in key} == key else []


def kept_bounds_of_fewer_samples(run_path: Path, key: dict, n_images: int) -> tuple[int, list[float]]:
    """(K', bounds) of the largest K' < K whose kept bounds are of the same weights, images and settings as
    ``key``; (0, []) if there are none."""
    smaller = []
    for path in (run_path / "eval").glob("iw_k*.json"):
        suffix = path.stem[len("iw_k"):]
        if suffix.isdigit() and 0 < int(suffix) < key["k"]:
            smaller.append(int(suffix))
    for k in sorted(smaller, reverse=True):
        bounds = read_kept_bounds(iw_bounds_path(run_path, k), {**key, "k": k}, n_images)
        if bounds:
            return k, bounds
    return 0, []


def evaluate_run(run: Run, *, iw_samples: int = 0, test_limit: int | None = None, pictures: bool = True,
                 progress: bool = False, frechet: bool = False, runtime: Runtime | None = None) -> dict:
    """Everything ``convae eval`` reports for ``run`` (and writes to RUN/eval/). Under torchrun the ranks share the
    IW bound, the costly part; the rest is rank 0's, and the other ranks get an empty dict."""
    runtime = runtime or Runtime()
    data = run.data(test_limit)
    test_set = run.test_set(data)
    if iw_samples:
        iw, resumed, extended = kept_iw_bound(run, test_set, iw_samples, progress, runtime)
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
        result["pictures"] = draw_pictures(run, test_set, data.test_labels, run.path / "eval",
                                           class_names(data, run.model.classes))
    (run.path / "eval").mkdir(exist_ok=True)
    atomic_write_json(run.path / "eval" / "eval.json", result)  # always the numbers just printed
    return result


@torch.no_grad()
def artifact_scores(run: Run, *, n: int = 2000, test_limit: int | None = None, picture: bool = True) -> dict:
    """Checkerboard scores of prior samples and of test reconstructions against the test images."""
    model, p = run.model, next(run.model.parameters())
    data = run.data(test_limit)
    test_set = run.test_set(data)
    n = min(n, len(test_set))
    real = test_set.floats(0, n, p.dtype, p.device)
    generator = torch.Generator(device=p.device).manual_seed(0)
    samples = torch.cat([model.sample(min(500, n - s), generator=generator) for s in range(0, n, 500)])
    recon = torch.cat([model.reconstruct(real[s:s + 500], generator, labels=test_set.labels_of(s, min(s + 500, n), p.device))
                       for s in range(0, n, 500)])
    # the dots are a spatial pattern: score colour images by their luminance
    samples, recon, real = (t.mean(1, keepdim=True) for t in (samples, recon, real))
    stride = ALIAS_STRIDE
    result = {"run": str(run.path), "model": run.config.model, "step": run.step, "images": n,
              "samples": checkerboard_scores(samples, real, stride),
              "reconstructions": checkerboard_scores(recon, real, stride)}
    if picture:
        (run.path / "eval").mkdir(exist_ok=True)
        mean_s, mean_r = samples.double().mean(0)[0], real.double().mean(0)[0]
        spectrum_panel(mean_s, mean_r, power_spectrum(mean_s[None])[0], power_spectrum(mean_r[None])[0],
                       run.path / "eval" / "artifacts.png",
                       title=f"{run.config.model}: score (samples) {result['samples']['score']:.2f}, "
                             f"of mean {result['samples']['score_of_mean']:.2f}; 1.0 = like the data")
        atomic_write_json(run.path / "eval" / "artifacts.json", result)
    return result


def decoder_flatness(model_name: str) -> float | None:
    """Constant-input test of a freshly built decoder's upsampling layers (eval mode): 0 = flat output. In float64,
    so that float32 rounding (1e-6 where the fused resize convolution adds kernel taps first) does not read as a
    pattern."""
    from ..models import build_model

    torch.manual_seed(0)
    decoder = build_model(model_name).decoder.double()
    if not hasattr(decoder, "upsampling_stack"):
        return None  # fully connected: nothing upsamples
    stack, channels = decoder.upsampling_stack()
    # zero padding reaches further into the picture through a residual decoder's extra convolutions
    return flat_response(stack, (channels, 16, 16), border=getattr(decoder, "padding_reach", 16))
