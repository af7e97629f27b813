"""The training step and the levers that make it fast, kept apart from the loop that calls it.

``make_train_step`` returns a callable ``step(index, lr, step) -> terms`` that gathers the batch from the uint8 images
resident on the device, runs forward, loss, backward and Adam, and returns the loss terms [L_tot, L_likelihood,
L_KL] as one device tensor (no host sync). On CUDA it can record the whole step once as a CUDA graph and replay it, which removes the launch
overhead that dominates a small model at batch 32.
"""

from __future__ import annotations

import sys
import warnings

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..data import to_float
from ..models.noise import Draws, noise_from
from ..objectives import Objective, training_loss
from ..runtime import native_bf16


def effective_precision(config: TrainConfig, device: torch.device, warn=print) -> str:
    """bf16 where the hardware has it; otherwise fp32, saying so (emulated bf16 is many times slower)."""
    if config.precision == "bf16" and not native_bf16(device):
        warn(f"--precision bf16: {device.type} here has no native bf16 (needs AVX512-BF16/AMX or a CUDA GPU); "
             "training in fp32 instead")
        return "fp32"
    return config.precision


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device, capturable: bool = False):
    """Adam, fused: one pass over all parameters (measured 4x faster than foreach on this CPU), same update rule."""
    if device.type == "cuda":
        return torch.optim.Adam(model.parameters(), lr=torch.tensor(config.lr, device=device) if capturable
                                else config.lr, fused=True, capturable=capturable)
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)


def make_batch(images: torch.Tensor, levels: float, config: TrainConfig, dtype: torch.dtype,
               generator: torch.Generator | None = None, binarize: bool = True) -> torch.Tensor:
    """uint8 images -> the floats the model sees (gray values, or a fresh Bernoulli draw of them from ``generator``,
    torch's global one by default; ``binarize=False``: the gray values, for a caller that draws them itself)."""
    x = to_float(images, levels, config.image_size, dtype, config.resize_mode, config.quantize)
    if binarize and config.binarize == "dynamic":
        x = torch.bernoulli(x, generator=generator)
    return x


def objective_of(config: TrainConfig, dataset_size: int = 0) -> Objective:
    """The step's objective settings; ``dataset_size``: the training images (for a model's own objective)."""
    return Objective(config.beta, config.kl_warmup, config.free_bits, config.iw_train, dataset_size)


class EagerStep:
    """The plain step: PyTorch ops launched one by one (optionally through torch.compile). ``loss_function``: what
    the step differentiates (``objectives.training_loss``, or a hook's wrapper of it)."""

    def __init__(self, model, optimizer, images, levels, config, dtype, precision, labels=None,
                 loss_function=training_loss, generator: torch.Generator | None = None):
        """``generator``: the step's noise (binarization, dropout, eps) from it rather than torch's global one."""
        self.model, self.optimizer, self.images = model, optimizer, images
        self.generator = generator
        self.labels = labels  # the training labels on the device, for a conditional model
        self.levels, self.config, self.dtype, self.precision = levels, config, dtype, precision
        self.objective = objective_of(config, len(images))
        # an input of the step like the learning rate: a device tensor, so a CUDA graph reads the current value
        self.kl_weight = torch.tensor(self.objective.kl_weight(0), device=next(model.parameters()).device,
                                      dtype=torch.float32)
        self.loss_function = loss_function
        self.training_loss = torch.compile(loss_function) if config.compile else loss_function
        self._checked_compile = not config.compile

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def clip_gradients(self) -> None:
        """--grad-clip: rescale the gradient to at most that L2 norm (no host sync: graph-safe)."""
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip, foreach=True)

    def _set_inputs(self, lr: float, step: int) -> None:
        self._set_lr(lr)
        if not self.objective.plain:
            self.kl_weight.fill_(self.objective.kl_weight(step))

    def _loss(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = None if self.labels is None else self.labels[index]
        return self.training_loss(self.model, x, self.objective, self.kl_weight, self.precision, labels)

    def __call__(self, index: torch.Tensor, lr: float, step: int = 0) -> torch.Tensor:
        """One optimizer step on the images ``index``; ``step`` (0-based) sets the KL weight's warm-up."""
        self._set_inputs(lr, step)
        x = make_batch(self.images[index], self.levels, self.config, self.dtype, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        with noise_from(None if self.generator is None else Draws(self.generator)):
            if not self._checked_compile:
                loss, terms = self._first_compiled_call(x, index)
            else:
                loss, terms = self._loss(x, index)
        loss.backward()
        self.clip_gradients()
        self.optimizer.step()
        return terms.detach()

    def _first_compiled_call(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._checked_compile = True
        try:
            return self._loss(x, index)
        except Exception as e:  # a missing C++ compiler, an unsupported backend, ...
            print(f"convae: --compile: torch.compile failed here ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "running eager", file=sys.stderr)
            self.training_loss = self.loss_function
            self.optimizer.zero_grad(set_to_none=True)
            return self._loss(x, index)


class CudaGraphStep(EagerStep):
    """The whole step (gather, forward, backward, Adam) recorded once as a CUDA graph and replayed.

    The warm-up iterations that capture needs change the weights, BatchNorm statistics and Adam's moments; we put
    them back afterwards, so the graphed run makes the same updates as the eager one (its random numbers come
    from the same generator in another order, so it is not bit-identical). The batch indices and the learning
    rate are inputs of the graph: static tensors we copy into before each replay.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.training_loss = self.loss_function  # the graph replaces torch.compile (make_train_step warns)
        self.graph = None
        self.static_index = None

    def _body(self) -> torch.Tensor:
        x = make_batch(self.images[self.static_index], self.levels, self.config, self.dtype)
        loss, terms = self._loss(x, self.static_index)
        loss.backward()
        self.clip_gradients()
        self.optimizer.step()
        return terms.detach()

    def _capture(self, index: torch.Tensor) -> None:
        self.static_index = index.clone()
        saved_model = {k: v.clone() for k, v in self.model.state_dict().items()}
        saved_optimizer = {p: {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
                           for p, state in self.optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the graph then writes, not accumulates
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_loss = self._body()
        # undo the warm-up and capture updates: weights, BatchNorm statistics, Adam's moments and step count
        with torch.no_grad():
            for k, v in self.model.state_dict().items():
                v.copy_(saved_model[k])
            for p, state in self.optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor):
                        value.copy_(saved_optimizer[p][key]) if p in saved_optimizer else value.zero_()

    def __call__(self, index: torch.Tensor, lr: float, step: int = 0) -> torch.Tensor:
        self._set_inputs(lr, step)
        if self.graph is None:
            self._capture(index)
        self.static_index.copy_(index)
        self.graph.replay()
        return self.static_loss.clone()


def uses_cuda_graphs(config: TrainConfig, device: torch.device, eager_only: bool = False) -> bool:
    """CUDA graphs record one process's step on resident data. ``eager_only``: under DDP (the step holds
    collectives) or with streamed data (each batch comes from the host)."""
    return device.type == "cuda" and config.cuda_graphs and not eager_only


def make_train_step(model, optimizer, images, levels, config: TrainConfig, dtype, precision, device,
                    eager_only: bool = False, labels: torch.Tensor | None = None, wrap_loss=lambda f: f,
                    generator: torch.Generator | None = None):
    """``model`` is what the step calls: the VAE, or its DistributedDataParallel wrapper under torchrun;
    ``images[index]`` gives a batch of uint8 images on the device (resident, or ``StreamedImages``);
    ``labels[index]`` their classes on the device, for a conditional model; ``wrap_loss`` wraps the loss function
    (``Hooks.wrap_loss``); ``generator``: the step's noise from it (an eager step only)."""
    kind = EagerStep
    if uses_cuda_graphs(config, device, eager_only):
        if config.compile:
            warnings.warn("--compile with CUDA graphs: using the graphs alone")
        kind = CudaGraphStep
    if generator is not None:
        return EagerStep(model, optimizer, images, levels, config, dtype, precision, labels, wrap_loss(training_loss),
                         generator)
    return kind(model, optimizer, images, levels, config, dtype, precision, labels, wrap_loss(training_loss))
