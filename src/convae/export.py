"""``convae export RUN``: the trained encoder and decoder as files that need neither convae nor its code.

- ``onnx``: ``encoder.onnx`` (x -> mu, sigma) and ``decoder.onnx`` (z -> images), batch size free;
- ``torchscript``: ``encoder.pt`` and ``decoder.pt`` (``torch.jit.load``);
- ``safetensors``: the two modules' weights (to load into convae's models, or your own copy of them).

A model whose prior is not N(0, I) gets ``prior.onnx`` / ``prior.pt`` beside them (standard-normal noise -> z, the
prior's ``from_noise``; a prior without one is refused by name), and one whose posterior is not a diagonal Gaussian
gets ``posterior`` (the encoder's outputs and standard-normal eps -> z, e.g. through a flow); safetensors writes the
prior's and posterior's own weights where they have any.

The decoder returns mean images in [0, 1] (the likelihood's mean of its output), the encoder takes float images
N x C x H x W in [0, 1] at the model's size (what ``convae.load(...).prepare`` makes of raw images). A conditional
model's encoder and decoder take a second input, the labels as one-hot rows N x classes. ``model.json`` beside them
says so, with the shapes and the run they came from.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save as save_safetensors

from .version import __version__
from .errors import ConfigError
from .models.densities import parameter_names
from .files import atomic_write_bytes, atomic_write_text
from .inference import TrainedModel

FORMATS = ("onnx", "torchscript", "safetensors")


class ImageEncoder(nn.Module):
    """images (and for a conditional model one-hot labels) -> mu, sigma of q(z | x) (every group, flat)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vae.encode_onehot(x, onehot)


class ImageDecoder(nn.Module):
    """z (and for a conditional model one-hot labels) -> mean images of p(x | z)."""

    def __init__(self, vae):
        super().__init__()
        self.decoder, self.likelihood = vae.decoder, vae.likelihood

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None = None) -> torch.Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        return self.likelihood.mean(self.decoder(z))


class PriorSampler(nn.Module):
    """standard-normal noise -> z drawn from the model's prior (``Prior.from_noise``)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.vae.prior.from_noise(noise, self.vae)


class PosteriorSampler(nn.Module):
    """the encoder's outputs and standard-normal eps -> z drawn from q(z | x) (``Posterior.rsample``)."""

    def __init__(self, vae):
        super().__init__()
        self.posterior = vae.posterior

    def forward(self, *params_and_eps: torch.Tensor) -> torch.Tensor:
        return self.posterior.rsample(params_and_eps[:-1], params_and_eps[-1])


def _as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def fixed_axes(onnx_bytes: bytes, shapes: list) -> bytes:
    """The model's inputs then outputs with every axis but the batch at its size: the tracer leaves some it could not
    follow (a likelihood's split channels, an fc decoder's reshape) named like ``Clipimages_dim_1``."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    for value, shape in zip([*model.graph.input, *model.graph.output], shapes):
        for axis, size in zip(value.type.tensor_type.shape.dim[1:], shape):
            axis.dim_value = int(size)  # setting the value clears a symbolic name
    return model.SerializeToString()


def export(model: TrainedModel, fmt: str, out: Path) -> list[Path]:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's exporter needs it to write the file)
        except ImportError:
            raise ConfigError("--format onnx: needs the onnx package (pip install onnx, or convae[onnx])") from None
    vae = model.model.cpu().float().eval()
    if vae.autoregressive and fmt != "safetensors":
        raise ConfigError(f"--format {fmt}: model {model.config.model!r} draws its images pixel by pixel, a loop a "
                          "traced graph cannot hold; export --format safetensors (the weights) instead")
    size, channels = model.config.image_size, model.channels
    examples_x = (torch.rand(2, channels, size, size),)
    examples_z = (torch.randn(2, vae.latent_dim),)
    inputs_x, inputs_z = ["images"], ["z"]
    if vae.classes:  # the labels travel as a second input, one-hot
        onehot = vae.onehot(torch.tensor([0, vae.classes - 1]), 2)
        examples_x, examples_z = examples_x + (onehot,), examples_z + (onehot,)
        inputs_x, inputs_z = inputs_x + ["labels_onehot"], inputs_z + ["labels_onehot"]
    with torch.no_grad():
        params = _as_tuple(ImageEncoder(vae).eval()(*examples_x))
    encoder_outputs = parameter_names(len(params))
    modules = {"encoder": (ImageEncoder(vae).eval(), examples_x, inputs_x, encoder_outputs),
               # eval(): torch.onnx.export puts a module back in the mode it found, and a new module is in training
               # mode, which would leave the decoder's dropout on after the export
               "decoder": (ImageDecoder(vae).eval(), examples_z, inputs_z, ["images"])}
    prior_noise = vae.prior.noise_dim(vae.latent_dim)
    if not vae.prior.standard_normal:
        if fmt != "safetensors":
            try:
                vae.prior.from_noise(torch.randn(2, prior_noise), vae)
            except NotImplementedError:
                raise ConfigError(f"--format {fmt}: the prior of model {model.config.model!r} "
                                  f"({type(vae.prior).__name__}) has no from_noise(noise, model), so a file cannot draw "
                                  "from it; export --format safetensors (the weights) instead") from None
        modules["prior"] = (PriorSampler(vae).eval(), (torch.randn(2, prior_noise),), ["noise"], ["z"])
    if not vae.posterior.diagonal_gaussian:
        eps = torch.randn(2, vae.noise_dim)
        modules["posterior"] = (PosteriorSampler(vae).eval(), params + (eps,), encoder_outputs + ["eps"], ["z"])
    out.mkdir(parents=True, exist_ok=True)
    earlier = exported_files(out)  # an earlier export into this folder, whose files this one replaces
    written = []
    for name, (module, examples, inputs, outputs) in modules.items():
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the tracers warn about Python control flow they record as constants
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                torch.onnx.export(module, examples, buffer, input_names=inputs, output_names=outputs,
                                  dynamic_axes={n: {0: "batch"} for n in inputs + outputs}, dynamo=False)
                with torch.no_grad():
                    shapes = [t.shape[1:] for t in (*examples, *_as_tuple(module(*examples)))]
                buffer = io.BytesIO(fixed_axes(buffer.getvalue(), shapes))
                path = out / f"{name}.onnx"
            elif fmt == "torchscript":
                torch.jit.save(torch.jit.trace(module, examples), buffer)
                path = out / f"{name}.pt"
            else:
                raw = getattr(vae, name)  # convae's own module names: encoder, decoder, prior, posterior
                state = {k: v.detach().contiguous() for k, v in raw.state_dict().items()}
                if not state and name in ("prior", "posterior"):
                    continue  # nothing to keep: its samples are computed from the encoder's (a VampPrior)
                buffer.write(save_safetensors(state, metadata={"convae": __version__, "module": name}))
                path = out / f"{name}.safetensors"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    description = {"format": fmt, "convae": __version__, "run": str(model.run.path), "step": model.run.step,
                   "model": model.config.model, "encoder": model.config.encoder, "likelihood": vae.likelihood.name,
                   "latent_dim": vae.latent_dim, "image_shape": [channels, size, size],
                   "classes": vae.classes, "conditional": bool(vae.classes),
                   "encoder_input": f"float32 images N x {channels} x {size} x {size} in [0, 1]",
                   "encoder_outputs": ["mu (N x latent_dim)", "sigma (N x latent_dim)"] + encoder_outputs[2:],
                   **vae.describe_densities(),
                   "decoder_input": "float32 z, N x latent_dim (" + (
                       "z ~ N(0, I) for samples" if vae.prior.standard_normal else
                       f"for samples z = prior(noise), noise ~ N(0, I) of N x {prior_noise}") + ")",
                   "posterior_sample": ("z = mu + sigma * eps, eps ~ N(0, I)" if vae.posterior.diagonal_gaussian else
                                        f"z = posterior({', '.join(encoder_outputs)}, eps), eps ~ N(0, I) of N x "
                                        f"{vae.noise_dim}"),
                   "decoder_output": f"mean images N x {channels} x {size} x {size} in [0, 1]",
                   "preprocessing": preprocessing(model)}
    if vae.classes:
        description["labels_input"] = f"float32 one-hot labels N x {vae.classes}, the second input of both"
    description["files"] = [p.name for p in written]
    atomic_write_text(out / "model.json", json.dumps(description, indent=2) + "\n")
    for stale in earlier - set(written):  # model.json now describes only this export: nothing else of ours stays
        stale.unlink(missing_ok=True)
    return written + [out / "model.json"]


def preprocessing(model: TrainedModel) -> dict:
    """How an image becomes the encoder's input, as training prepared its data (``convae.load`` does it for you):
    what a user of the exported files needs to feed them."""
    config = model.config
    return {"image_size": config.image_size, "channels": model.channels,
            "colour": "RGB" if model.channels == 3 else "gray (L)",
            "resize": config.resize_mode, "background": config.background, "levels": model.levels,
            "values": f"the stored 8-bit values divided by {model.levels:g} (floats in [0, 1])",
            "binarize": config.binarize,
            "steps": (f"draw transparency over {config.background}; convert to {'RGB' if model.channels == 3 else 'L'}; "
                      + {"pad": f"pad to a square with {config.background}, then resize to {config.image_size} with a "
                                "box filter",
                         "bilinear": f"centre-crop to a square, then resize bilinearly to {config.image_size}",
                         "area": f"centre-crop to a square, then resize to {config.image_size} with a box filter"}
                      .get(config.resize_mode, config.resize_mode)
                      + f"; divide by {model.levels:g}" + ("; the model was trained on Bernoulli draws of these values "
                                                         "(feed the gray values to encode)"
                                                         if config.binarize == "dynamic" else ""))}


def exported_files(out: Path) -> set[Path]:
    """The files an earlier ``convae export`` left in ``out`` (named by its model.json; none where there is none)."""
    try:
        earlier = json.loads((out / "model.json").read_text())
    except (OSError, ValueError):
        return set()
    if not isinstance(earlier, dict) or "convae" not in earlier or earlier.get("format") not in FORMATS:
        return set()
    names = earlier.get("files") or [f"{n}.{ext}" for n in ("encoder", "decoder", "prior", "posterior")
                                     for ext in ("onnx", "pt", "safetensors")]  # written before files were listed
    return {out / name for name in names if isinstance(name, str) and "/" not in name and (out / name).is_file()}
