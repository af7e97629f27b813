"""The importance-weighted bound on log p(x) (Burda et al. 2016), the number papers report as "test NLL".

    log p(x) >= E[ log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x) ],  z_k ~ q(z | x)

K = 1 is the ELBO (in expectation); the bound tightens as K grows. Samples are drawn in chunks so that K = 1000
or 5000 fits in memory: every image's K log-weights are kept (K floats each) and combined with logsumexp.
K = 5000 over 10,000 test images is 50 million decoder passes (hours on a CPU, minutes on a GPU): the bounds of
the images done so far can be handed out after every batch and handed back to go on after an interruption, and the
bounds of a smaller K can be handed in to draw only the samples they lack (K = 1000, then 4000 more for K = 5000).
``kept_iw_bound`` keeps each image's bound in RUN/eval/iw_kK.json for that, keyed by the weights and images.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import IW_PRECISIONS
from ..data import EvalImages
from ..files import atomic_write_json
from ..models import VAE
from ..models.frozen import frozen_copy
from ..progress import Progress, Stopwatch
from ..runs import Run, RunDir
from ..runtime import Runtime, native_bf16
from .elbo import batch_generator

IW_BATCH = 100  # test images per batch of the IW bound (and per save of its progress)
IW_SEED = 0
# IW_PRECISIONS, how the decoder computes for the bound: "fp32"; "bf16" (its products in bfloat16 under autocast,
# the latent densities, the likelihood and the sums in float32 or float64); "auto": bf16 where the hardware
# multiplies bfloat16 natively and the model allows it, else fp32. On binarized MNIST the two bounds differ by
# under 0.002 nats (docs/performance.md); bounds kept in RUN/eval are keyed by the precision, never mixed.


def iw_precision(model: VAE, precision: str = "auto") -> str:
    """The precision ``precision`` resolves to for ``model``: fp32 or bf16."""
    if precision not in IW_PRECISIONS:
        raise ValueError(f"IW precision {precision!r}: expected one of {', '.join(IW_PRECISIONS)}")
    p = next(model.parameters())
    if p.dtype != torch.float32 or not model.decoder_holds_no_density:
        return "fp32" if p.dtype == torch.float32 else str(p.dtype).removeprefix("torch.")
    if precision == "auto":
        return "bf16" if native_bf16(p.device) else "fp32"
    return precision


@dataclass
class IWResult:
    nll: float            # -mean log p(x) bound, nats per image
    k: int
    n_images: int
    std_error: float      # of the mean over images
    bounds: list[float]   # each image's log p(x) bound, in the order of the images
    precision: str = "fp32"  # how the decoder computed (IW_PRECISIONS, resolved)


def log_weights(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator, max_batch: int = 4096,
                labels: torch.Tensor | None = None, first: int = 0, watch: Stopwatch | None = None,
                precision: str = "fp32") -> torch.Tensor:
    """N x (K - first) log importance weights log p(x|z) + log p(z) - log q(z|x), z ~ q(z|x), of samples first to
    K - 1 (given the ``labels`` of a conditional model).

    The noise comes in chunks of a fixed size (``max_batch`` // N samples), each drawn whole from ``generator``,
    so sample j is the same draw whatever K is: the first K' samples of a K-sample evaluation are those of a
    K'-sample one, and ``first`` = K' skips them (their noise is drawn, not decoded). ``watch``: where the time
    goes (the encoder; the decoder with the likelihood). ``precision``: fp32, or bf16 for the decoder's products
    (``IW_PRECISIONS``)."""
    watch = watch or Stopwatch()
    decode_dtype = torch.bfloat16 if precision == "bf16" else None
    with watch("encoder"):
        posterior = model.infer(x, labels)
    n, d = len(x), model.noise_dim
    chunk = max(1, max_batch // n)
    out = []
    for start in range(0, k, chunk):
        eps = torch.randn((n, chunk, d), generator=generator, device=x.device, dtype=x.dtype)
        eps = eps[:, max(0, first - start):min(chunk, k - start)]
        if eps.shape[1]:
            with watch("decoder"):
                log_px_z, log_pz, log_qz = model.log_weight_terms(x, posterior, eps, labels, decode_dtype)
                out.append(log_px_z.double() + log_pz.double() - log_qz.double())
    return torch.cat(out, dim=1)


@torch.no_grad()
def importance_weighted_nll(model: VAE, data: EvalImages, k: int, *, batch_size: int = 100, seed: int = 0,
                            progress: bool = False, done: Sequence[float] = (),
                            save: Callable[[list[float]], None] | None = None,
                            fewer: tuple[int, Sequence[float]] = (0, ()),
                            runtime: Runtime | None = None, watch: Stopwatch | None = None,
                            precision: str = "fp32") -> IWResult:
    """-log p(x) bounded with K importance samples, averaged over ``data`` (eval mode).

    Each batch of images draws its samples from a generator of its own (``batch_generator``: a function of
    ``seed`` and its first image), so an image's bound does not depend on the batches before it or on who computes
    it: an evaluation that stopped and goes on from ``done`` (the bounds of the first images, as ``save`` was given
    them after every batch) ends with the numbers of one that ran through, and under torchrun each of W ranks takes
    one batch of every W and the bounds are gathered in order (``save`` and the progress bar on rank 0).

    ``fewer`` = (K', bounds): the bounds of the first images with K' < K samples, from the same ``seed`` and
    ``batch_size``. Those images draw only samples K' to K - 1 and add them to the K' already summed
    (log sum_k w_k = logaddexp(bound' + log K', log sum_{k >= K'} w_k)): the same bound as drawing all K afresh."""
    fewer_k, fewer_bounds = fewer
    for what, given in (("already done", done), (f"with K = {fewer_k}", fewer_bounds)):
        if len(given) > len(data) or (len(given) % batch_size and len(given) != len(data)):
            raise ValueError(f"{len(given)} bounds {what} do not end a batch of {batch_size} of {len(data)} images")
    if fewer_bounds and not 0 < fewer_k < k:
        raise ValueError(f"bounds with K = {fewer_k} cannot be extended to K = {k}")
    runtime = runtime or Runtime()
    p = next(model.parameters())
    # the model as the bound runs it: a copy made for a long evaluation (models/frozen.py says what it changes), on a
    # CPU with its weights in NHWC memory, where oneDNN's (transposed) convolutions run 1.5-3x faster
    # (docs/performance.md); the caller's model is not touched
    model = frozen_copy(model, channels_last=p.device.type == "cpu")
    bounds = [float(b) for b in done]
    starts = range(len(bounds), len(data), batch_size)
    rounds = [starts[i:i + runtime.world_size] for i in range(0, len(starts), runtime.world_size)]
    bar = Progress(len(data), f"IW bound, K = {k}", "images", show=progress and runtime.is_writer, every=30.0,
                   initial=len(bounds))
    try:
        for batch_starts in rounds:
            mine: list[float] = []
            if runtime.rank < len(batch_starts):
                start = batch_starts[runtime.rank]
                stop = min(start + batch_size, len(data))
                first = fewer_k if stop <= len(fewer_bounds) else 0
                x = data.floats(start, stop, p.dtype, p.device)
                w = log_weights(model, x, k, batch_generator(p.device, seed, start),
                                labels=data.labels_of(start, stop, p.device), first=first, watch=watch,
                                precision=precision)
                log_sum = torch.logsumexp(w, dim=1)
                if first:
                    summed = torch.tensor(fewer_bounds[start:stop], dtype=log_sum.dtype, device=log_sum.device)
                    log_sum = torch.logaddexp(log_sum, summed + math.log(first))
                mine = (log_sum - math.log(k)).tolist()
            for rank_bounds in runtime.all_gather(mine):  # in rank order = batch order
                bounds.extend(rank_bounds)
            bar.update(len(bounds) - bar.done)
            if save is not None and runtime.is_writer:
                save(bounds)
    finally:
        bar.close()
    b = torch.tensor(bounds, dtype=torch.float64)
    return IWResult(-b.mean().item(), k, len(b), (b.std() / math.sqrt(len(b))).item() if len(b) > 1 else 0.0, bounds,
                    precision)


def iw_bounds_path(run_path: Path, k: int, precision: str = "fp32") -> Path:
    """RUN/eval/iw_kK.json (a float32 decoder), iw_kK_bf16.json (bfloat16): each precision's bounds apart."""
    return RunDir(run_path).eval_file(f"iw_k{k}.json" if precision == "fp32" else f"iw_k{k}_{precision}.json")


def kept_iw_bound(run: Run, test_set: EvalImages, k: int, progress: bool = False, runtime: Runtime | None = None,
                  batch_size: int = IW_BATCH, watch: Stopwatch | None = None,
                  precision: str = "fp32") -> tuple[IWResult, int, dict | None]:
    """The IW bound with K samples, each image's bound kept in RUN/eval/iw_kK.json after every batch: an evaluation
    stopped by Ctrl-C or a lost machine goes on from there when run again on the same weights, and a finished one
    is read back. Kept bounds of a smaller K (the largest there is) give the first samples of the images they cover:
    only the rest are drawn. Under torchrun the ranks share the batches and rank 0 keeps the file. Returns the
    result, how many images' bounds came whole from the file, and which smaller K was extended (None if none).
    ``batch_size`` test images share a noise generator: bounds kept with another batch size are not reused.
    ``precision`` (``IW_PRECISIONS``): how the decoder computes; each precision's bounds are kept apart."""
    runtime = runtime or Runtime()
    precision = iw_precision(run.model, precision)
    path, key, done, fewer, extended = iw_bounds_path(run.path, k, precision), {}, [], (0, []), None
    if runtime.is_writer:  # rank 0 alone reads and writes the files, and tells the others where to begin
        key = iw_bounds_key(run, test_set, k, batch_size, precision)
        done = read_kept_bounds(path, key, len(test_set))
        if len(done) < len(test_set):
            fewer = kept_bounds_of_fewer_samples(run.path, key, len(test_set))
        run.dir.eval_dir.mkdir(exist_ok=True)
        if 0 < len(done) < len(test_set):  # said at the start: the rest may take hours
            print(f"IW bound, K = {k}: going on from the bounds of {len(done)} of {len(test_set)} images kept in "
                  f"{path}", file=sys.stderr, flush=True)
        if len(fewer[1]) > len(done):
            extended = {"k": fewer[0], "images": len(fewer[1]) - len(done),
                        "file": str(iw_bounds_path(run.path, fewer[0], precision))}
            print(f"IW bound, K = {k}: the first {extended['k']} samples of {extended['images']} images come from "
                  f"{extended['file']}; drawing the other {k - fewer[0]}", file=sys.stderr, flush=True)
    done, fewer = runtime.broadcast((done, fewer))
    iw = importance_weighted_nll(run.model, test_set, k, batch_size=batch_size, seed=IW_SEED, progress=progress,
                                 done=done, save=lambda bounds: atomic_write_json(path, {**key, "bounds": bounds}),
                                 fewer=fewer, runtime=runtime, watch=watch, precision=precision)
    return iw, len(done), extended


def iw_bounds_key(run: Run, test_set: EvalImages, k: int, batch_size: int = IW_BATCH, precision: str = "fp32") -> dict:
    """What kept bounds are of: these weights, these test images (and labels), these settings."""
    images = hashlib.sha256(test_set.images.cpu().contiguous().numpy().tobytes())
    if test_set.labels is not None:
        images.update(test_set.labels.cpu().contiguous().numpy().tobytes())
    return {"step": run.step, "weights_sha256": run.weights_sha256, "test_images_sha256": images.hexdigest(),
            "k": k, "seed": IW_SEED, "batch_size": batch_size, "n_images": len(test_set), "precision": precision}


KEY_DEFAULTS = {"precision": "fp32"}  # what a key written before the key had that name meant


def read_kept_bounds(path: Path, key: dict, n_images: int) -> list[float]:
    """The bounds kept in ``path`` if they are of ``key`` and end a batch; else none (the file is then
    overwritten from the first image)."""
    try:
        saved = json.loads(path.read_text())
        bounds = [float(b) for b in saved["bounds"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # none yet, or not a file of ours
    ends_a_batch = len(bounds) == n_images or (len(bounds) < n_images and len(bounds) % key["batch_size"] == 0)
    return bounds if ends_a_batch and {name: saved.get(name, KEY_DEFAULTS.get(name)) for name in key} == key else []


def kept_bounds_of_fewer_samples(run_path: Path, key: dict, n_images: int) -> tuple[int, list[float]]:
    """(K', bounds) of the largest K' < K whose kept bounds are of the same weights, images and settings as
    ``key``; (0, []) if there are none."""
    smaller = []
    precision = key.get("precision", "fp32")
    for path in RunDir(run_path).eval_dir.glob("iw_k*.json"):
        suffix = path.stem[len("iw_k"):].removesuffix("" if precision == "fp32" else f"_{precision}")
        if suffix.isdigit() and 0 < int(suffix) < key["k"]:
            smaller.append(int(suffix))
    for k in sorted(smaller, reverse=True):
        bounds = read_kept_bounds(iw_bounds_path(run_path, k, precision), {**key, "k": k}, n_images)
        if bounds:
            return k, bounds
    return 0, []
