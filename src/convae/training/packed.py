"""Many runs of one architecture trained at once, a *pack*, while each member stays the run it would be alone: its
own seed (initial weights), data order, noise, Adam state, learning-rate and KL schedules, weight average, and its own
run folder (config.json, metrics, checkpoints, TensorBoard, report) that every command takes as it is.

A pack steps all its members together, in one of two ways, chosen by measuring both (``measure_pack_sizes``):

* ``batched``: one set of batched kernels for all members (``torch.func.vmap`` over their stacked parameters): what a
  GPU wants, where a small model's step is launch-bound;
* ``threads``: the members side by side on the CPU's cores, each the solo step with one intra-op thread: what a CPU
  wants where a step is too small to keep two threads busy (measured: the fc model at batch 128 gains 1.65x on 2
  cores, the compute-bound seed model little; batched kernels gain nothing on a CPU: docs/performance.md).

How close a member is to its solo run: its noise (dynamic binarization, dropout masks, the eps of z) is drawn from
the member's own generator in the order the solo run draws it from torch's global one, so on the CPU it is the same
noise value for value; its Adam step, gradient clipping, weight average, checkpoints and epoch-end evaluation are
the solo code on its own parameters (``Member`` is a ``Trainer``). What differs is float32's last bits: other
blockings of the same sums (batched), or one intra-op thread instead of the default (threads), which training's
chaos then grows. On CUDA the solo run draws dropout in a fused kernel and takes its step as a CUDA graph, in another
order: there a member's noise is another draw of the same distributions.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.func import functional_call, vmap

from ..config import TrainConfig
from ..errors import FileSystemFault, NonFiniteLoss, OutOfMemory, TrainingInterrupted, UntrustedFigure
from ..faults import describe_os_error, first_line, is_out_of_memory
from ..models.noise import Recorder, Replay, draw, noise_from
from ..signals import StopSignals
from .engine import make_batch, make_optimizer, make_train_step, objective_of
from .hooks import Hooks
from .loop import Trainer
from .schedule import learning_rate

# Settings members of one pack may differ in: they change what a step computes, not the shapes it computes with.
PACKABLE = frozenset({"seed", "lr", "lr_schedule", "warmup_fraction", "warmup_steps", "beta", "kl_warmup",
                      "kl_warmup_fraction", "free_bits", "grad_clip", "ema", "out", "extra"})


def pack_key(config: TrainConfig) -> tuple:
    """Runs with the same key can share a pack (``--iw-train K`` > 1 trains alone: its K-sample pass is its own)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in PACKABLE}
    return tuple(sorted((k, str(v)) for k, v in settings.items())) + (("alone", config.iw_train > 1 and config.out),)


STRATEGIES = ("batched", "threads")


class Member(Trainer):
    """One run of a pack: a ``Trainer`` whose steps the pack takes, drawing its noise from a generator of its own.
    Under the ``threads`` strategy it keeps its own solo step (on that generator); ``batched`` steps it with the
    others."""

    BUDGET_TIMED_ON = "on the pack's step (fresh models)"

    def __init__(self, *args, strategy: str, pack_rate=None, **kwargs):
        self.strategy, self.pack_rate = strategy, pack_rate
        super().__init__(*args, **kwargs)

    def time_budget_step(self) -> tuple[float, int]:
        """A member takes the steps its pack can take in the budget: the pack's step, timed once for all of them."""
        return self.pack_rate(self.device)

    def eager_only(self) -> bool:
        return True

    def make_step(self, step_module, eager_only: bool):
        """Its solo step on its own generator: what the ``threads`` strategy takes (and a batched pack falls back to
        where the model cannot be batched)."""
        self.state.own_noise(self.device)  # its stream, from where the solo run's would be now
        self.objective = objective_of(self.config, len(self.data.train_images))
        return make_train_step(step_module, self.optimizer, self.streamed or self.data.train_images,
                               self.data.levels, self.config, self.dtype, self.precision, self.device,
                               eager_only=True, labels=self.data.train_labels if self.config.conditional else None,
                               generator=self.state.generator)


class ThreadedStep:
    """One optimizer step of every member of a pack, side by side: the members dealt to ``workers`` threads (one
    per core), each taking its members' solo steps; ops release the GIL. Each op should run on one thread
    (``one_thread_each``), or the members' ops fight over the cores."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="convae-member")

    def __call__(self, members: list, indices: list[torch.Tensor], lrs: list[float]) -> torch.Tensor:
        def lane(first: int) -> list[tuple[int, torch.Tensor]]:
            return [(k, members[k].train_step(indices[k], lrs[k], members[k].state.step))
                    for k in range(first, len(members), self.workers)]

        lanes = [self.pool.submit(lane, w) for w in range(min(self.workers, len(members)))]
        done = dict(pair for future in lanes for pair in future.result())
        return torch.stack([done[k] for k in range(len(members))])

    @contextlib.contextmanager
    def one_thread_each(self):
        """Ops on one intra-op thread while the members step (torch's thread count is the process's)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        self.pool.shutdown()


class NotBatchable(Exception):
    """The model's step cannot run as one vmapped pass (e.g. its forward draws random numbers of its own, as
    ``nn.Dropout`` or ``torch.randn`` do, instead of through ``convae.standard_normal`` / ``convae.Dropout``)."""


class MemberLoss(torch.nn.Module):
    """The whole of one member's loss as one module call, so that ``functional_call`` swaps in the member's
    parameters for everything the loss reads: the encoder and decoder, and the prior's and posterior's own (a
    VampPrior's pseudo-inputs, a flow's weights)."""

    def __init__(self, model, precision: str, dataset_size: int):
        super().__init__()
        self.model, self.precision, self.dataset_size = model, precision, dataset_size

    def forward(self, x, labels):
        """The -ELBO terms (nll: N, kl: N x U) and, for a model with its own objective, its value and parts per
        image (N x (1 + parts))."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(x, labels)
        terms = self.model.loss_terms(out, x)
        own = self.model.training_objective(out, x, terms, self.dataset_size)
        if own is None:
            return terms.nll, terms.kl
        figures = [own.total, *(own.parts[p] for p in self.model.objective.parts)]
        return terms.nll, terms.kl, torch.stack([f.to(terms.nll.dtype) for f in figures], dim=1)


class BatchedStep:
    """One optimizer step of every member of a pack: the members' parameters and BatchNorm buffers stacked, one
    vmapped forward and backward, then each member's own gradient clipping and Adam step.

    A member (a ``Member``, or any object with ``model``, ``optimizer``, ``config``, ``objective`` and ``state`` with
    ``step`` and ``generator``) brings its own weights and noise; the pack's shared settings (shapes, data, device)
    come from ``lead``."""

    def __init__(self, lead):
        self.model, self.config, self.data = lead.model, lead.config, lead.data
        self.images = getattr(lead, "streamed", None) or lead.data.train_images
        self.labels = lead.data.train_labels if lead.config.conditional else None
        self.device, self.dtype, self.precision = lead.device, lead.dtype, lead.precision
        self.plan = self.record_plan(lead)
        self.loss_module = MemberLoss(self.model, self.precision, len(self.data.train_images))
        # every random number comes in from outside; labels only for a conditional model
        self.batched = vmap(self.member_loss, in_dims=(0,) * 7 + (None if self.labels is None else 0,),
                            randomness="error")
        self.probe([lead, lead])

    def probe(self, lanes: list) -> None:
        """One vmapped pass of two copies of the lead's weights, without gradients and on copies of its buffers:
        ``NotBatchable`` with the reason where the model cannot run batched (nothing moves: no weight, statistic or
        member's stream)."""
        saved = [m.state.generator.get_state() for m in lanes]
        try:
            x, noise, kl_weight, free_bits, plain, labels = self.inputs(
                lanes, [torch.arange(self.config.batch_size, device=self.device)] * len(lanes), [0] * len(lanes))
            params = {n: torch.stack([p.detach()] * len(lanes)) for n, p in self.model.named_parameters()}
            buffers = {n: torch.stack([b.clone()] * len(lanes)) for n, b in self.model.named_buffers()}
            with torch.no_grad():
                self.batched(params, buffers, x, noise, kl_weight, free_bits, plain, labels)
        except (RuntimeError, NotImplementedError, ValueError) as e:
            if is_out_of_memory(e):
                raise
            raise NotBatchable(first_line(e, 200)) from None
        finally:
            for m, state in zip(lanes, saved):
                m.state.generator.set_state(state)

    def record_plan(self, lead) -> list:
        """What one step of a member draws inside the model (kinds, shapes, dtypes), from a forward pass of a copy of
        the lead's model on a batch (the copy: its BatchNorm statistics must not move; a cloned generator: no
        member's stream moves)."""
        generator = torch.Generator(device=self.device).set_state(lead.state.generator.get_state())
        index = torch.arange(self.config.batch_size, device=self.device)
        x = make_batch(self.images[index], self.data.levels, self.config, self.dtype, generator)
        labels = None if self.labels is None else self.labels[index]
        with torch.no_grad(), noise_from(Recorder(generator)) as recorder, self.autocast():
            copy.deepcopy(self.model).train()(x, labels)
        return recorder.plan

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def member_loss(self, params, buffers, x, noise, kl_weight, free_bits, plain, labels):
        """One member's loss and logged terms [L_tot, L_likelihood, L_KL], as ``objectives.training_loss`` computes
        them for the ELBO with its KL weight and free bits (vmapped: every argument is this member's slice)."""
        with noise_from(Replay(noise)):
            nll, kl_units, *own = functional_call(self.loss_module, ({f"model.{n}": t for n, t in params.items()},
                                                                     {f"model.{n}": t for n, t in buffers.items()}),
                                                  (x, labels))
        kl = kl_units.sum(1)
        if own:  # the model's own objective: minimised, and logged after the -ELBO's terms (its levers are refused)
            figures = own[0].mean(0)
            return figures[0], torch.cat([torch.stack([(nll + kl).mean(), nll.mean(), kl.mean()]).to(figures.dtype),
                                          figures])
        nll_mean, kl_mean = nll.mean(), kl.mean()
        penalised = torch.where(free_bits > 0, kl_units.mean(0).clamp(min=free_bits).sum(), kl_mean)
        loss = torch.where(plain, (nll + kl).mean(), nll_mean + kl_weight * penalised)
        terms = torch.where(plain, torch.stack([(nll + kl).mean(), nll_mean, kl_mean]),
                            torch.stack([nll_mean + kl_mean, nll_mean, kl_mean]))
        return loss, terms

    def inputs(self, members: list[Member], indices: list[torch.Tensor], steps: list[int]):
        """The stacked batch (each member's images, binarized from its own stream), noise and loss settings."""
        x = make_batch(self.images[torch.cat(indices)], self.data.levels, self.config, self.dtype, binarize=False)
        x = x.view(len(members), -1, *x.shape[1:])
        if self.config.binarize == "dynamic":  # first, as the solo step draws it before the forward pass
            x = torch.stack([torch.bernoulli(x[k], generator=m.state.generator) for k, m in enumerate(members)])
        noise = list(zip(*(draw(self.plan, m.state.generator, self.device) for m in members)))
        noise = [torch.stack(n) for n in noise]
        settings = torch.tensor([[m.objective.kl_weight(s), m.config.free_bits] for m, s in zip(members, steps)],
                                dtype=torch.float32, device=self.device)
        plain = torch.tensor([m.objective.plain for m in members], device=self.device)
        labels = None if self.labels is None else torch.stack([self.labels[i] for i in indices])
        return x, noise, settings[:, 0], settings[:, 1], plain, labels

    def __call__(self, members: list[Member], indices: list[torch.Tensor], lrs: list[float]) -> torch.Tensor:
        """Each member's step on its images ``indices[k]`` with learning rate ``lrs[k]``; the members' logged terms
        (members x 3, on the device)."""
        x, noise, kl_weight, free_bits, plain, labels = self.inputs(members, indices, [m.state.step for m in members])
        names = [n for n, _ in self.model.named_parameters()]
        buffer_names = [n for n, _ in self.model.named_buffers()]
        for m in members:
            m.optimizer.zero_grad(set_to_none=True)
        params = {n: torch.stack([dict(m.model.named_parameters())[n] for m in members]) for n in names}
        buffers = {n: torch.stack([dict(m.model.named_buffers())[n] for m in members]) for n in buffer_names}
        loss, terms = self.batched(params, buffers, x, noise, kl_weight, free_bits, plain, labels)
        loss.sum().backward()  # each member's gradient reaches its own parameters through the stack
        with torch.no_grad():
            for k, m in enumerate(members):  # BatchNorm's running statistics, updated in the stack
                for n, b in m.model.named_buffers():
                    b.copy_(buffers[n][k])
        for m, lr in zip(members, lrs):
            for group in m.optimizer.param_groups:
                group["lr"] = lr
            if m.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(m.model.parameters(), m.config.grad_clip, foreach=True)
            m.optimizer.step()
        return terms.detach()

    @contextlib.contextmanager
    def one_thread_each(self):
        yield

    def close(self) -> None:
        pass


def pack_step(strategy: str, lead, workers: int | None = None, log=None):
    """The step of a pack: ``BatchedStep`` on the lead's shapes, or ``ThreadedStep`` on ``workers`` threads (default:
    torch's intra-op thread count, one per core). With ``log``, a model that cannot be batched falls back to
    ``threads`` and says why in one line; without it, ``NotBatchable`` is raised."""
    if strategy == "batched":
        try:
            return BatchedStep(lead)
        except NotBatchable as e:
            if log is None:
                raise
            log(not_batchable_line(lead.config.model, str(e)))
    return ThreadedStep(workers or torch.get_num_threads())


def not_batchable_line(model: str, why: str) -> str:
    return (f"model {model}: its members step side by side (threads), not batched: {why} (draw a model's noise with "
            "convae.standard_normal and convae.Dropout to let packs batch it: docs/own-model.md)")


@dataclasses.dataclass
class Outcome:
    run_dir: str
    status: str          # "done", "complete" (already before this call), "stopped", "pruned"
    why: str = ""        # for a stopped member: the one line that says why


class Pack:
    """Members of one pack key, trained step by step together; a member whose loss turns non-finite stops alone
    (its last good checkpoint kept, the reason in RUN/status.json) and the others go on."""

    def __init__(self, configs: list[TrainConfig], *, data, runtime, strategy: str = "batched", log=print,
                 at_step: int | None = None, resume: str | None = None, epoch_end=None):
        """``at_step``: the members resume from their checkpoints of that step (the newest all of them hold).
        ``epoch_end(member) -> str | None``: asked after each member's epoch-end evaluation; a reason ends that member
        there (a search pruning it: its checkpoint and metrics stay, status "pruned") while the others go on."""
        self.log, self.resume, self.strategy, self.epoch_end = log, resume, strategy, epoch_end
        silent = lambda line: None  # noqa: E731  (each member's lines go to its own log.txt)
        pack_rate = functools.cache(lambda device: time_pack_step(configs, data, device, strategy))
        self.members = [Member(dataclasses.replace(c, quiet=True), runtime, data=data, resume=False,
                               auto_resume=True, log=silent, argv=None, hooks=Hooks(), at_step=at_step,
                               strategy=strategy, pack_rate=pack_rate) for c in configs]
        self.outcomes = {m.run_dir.path: Outcome(str(m.run_dir.path), "complete" if m.complete else "done")
                         for m in self.members}
        self.active = [m for m in self.members if not m.complete]
        self.last_save = time.monotonic()

    def run(self) -> list[Outcome]:
        """Train the members to their last step; a stop signal ends every member with a checkpoint at the same step
        and raises ``TrainingInterrupted`` (``resume``: the command that continues)."""
        step = pack_step(self.strategy, self.active[0], log=self.log) if self.active else None
        try:
            with StopSignals() as signals, self.faults_said():
                for m in self.active:
                    m.model.train()
                while self.active and self.active[0].state.step < self.active[0].last_step:
                    self.run_epoch(step, signals)
                    if signals.received:
                        lead = self.active[0]
                        raise TrainingInterrupted(lead.run_dir.path, lead.state.step, signals.received, self.resume)
                for m in self.active:
                    m.say_budget_used()
        finally:
            if step is not None:
                step.close()
            for m in self.members:
                m.close()
        return list(self.outcomes.values())

    def run_epoch(self, step, signals: StopSignals) -> None:
        for m in self.active:
            m.begin_epoch()
        lead = self.active[0]
        with step.one_thread_each():
            for i in range(lead.first_index, lead.steps_per_epoch):
                members = list(self.active)
                lrs = [learning_rate(m.config, m.state.step, m.last_step) for m in members]
                terms = step(members, [m.batch_indices(i) for m in members], lrs)
                for m, t, lr in zip(members, terms, lrs):
                    m.record_step(i, t, lr)
                self.replan_budget(members)
                stop, save_now = self.control_point(signals)
                ends = [self.guarded(m, m.finish_step, stop, save_now) for m in members]
                if save_now:
                    self.last_save = time.monotonic()
                if any(ends) or not self.active:
                    break
        for m in list(self.active):  # the epoch-end evaluations, on every thread
            self.guarded(m, m.end_steps)
        self.say_epoch()
        for m in list(self.active) if self.epoch_end else []:
            why = self.epoch_end(m)
            if why:
                self.active.remove(m)
                m.say(f"stopped: {why}")
                m.run_dir.write_status({"pruned": why})
                m.close()
                self.outcomes[m.run_dir.path] = Outcome(str(m.run_dir.path), "pruned", why)

    @staticmethod
    def replan_budget(members: list[Member]) -> None:
        """--time-budget: the pack re-plans at its lead's re-plan steps, from the pack's own speed, and every member
        takes that plan (its own cosine knotted where it is), so that they step together to the same end."""
        due = members[0].replan_due()
        if due is not None:
            for m in members:
                m.apply_replan(*due)

    def say_epoch(self) -> None:
        """One line for the pack after an epoch (or its part): the members' test -ELBOs and their images/s."""
        ends = [m.logger.metrics[-1] for m in self.active if m.logger.metrics]
        if ends:
            values = [e["test_neg_elbo"] for e in ends]
            self.log(f"  epoch {ends[0]['epoch']} (step {ends[0]['step']}) of {len(ends)} member(s): test -ELBO "
                     f"{min(values):.2f} .. {max(values):.2f}, {sum(e['img_per_s'] for e in ends):.0f} img/s in all")

    def control_point(self, signals: StopSignals) -> tuple[str | None, bool]:
        """Stop (the signal) and checkpoint decisions for the whole pack, so that its members always hold
        checkpoints of the same steps (a killed pack resumes from the newest step they share)."""
        config, step = self.active[0].config, self.active[0].state.step
        timed = bool(config.checkpoint_minutes) and time.monotonic() - self.last_save >= 60 * config.checkpoint_minutes
        return signals.received, (bool(config.checkpoint_every) and step % config.checkpoint_every == 0) or timed

    def guarded(self, member: Member, action, *args):
        """``action(*args)`` of one member; a non-finite loss (or evaluation) stops that member alone."""
        try:
            return action(*args)
        except (NonFiniteLoss, UntrustedFigure) as e:
            self.active.remove(member)
            member.say(f"stopped: {e}")
            member.run_dir.write_status({"stopped": str(e)})
            member.close()
            self.outcomes[member.run_dir.path] = Outcome(str(member.run_dir.path), "stopped", str(e))
            self.log(f"{member.run_dir.path.name}: stopped ({e}); the others go on")
            return False

    @contextlib.contextmanager
    def faults_said(self):
        """A full disk or memory that ran out, as one line; every member keeps its last checkpoint."""
        try:
            yield
        except OSError as e:
            raise FileSystemFault(f"{describe_os_error(e)}; the pack stopped at step {self.members[0].state.step}; each "
                                  "member keeps its last checkpoint: the same command continues") from None
        except (RuntimeError, MemoryError) as e:
            if not is_out_of_memory(e):
                raise
            raise OutOfMemory(f"out of memory at step {self.members[0].state.step + 1} of a pack of "
                              f"{len(self.members)} ({first_line(e, 160)}); try a smaller --pack or --batch-size") from None


def measure_pack_sizes(configs: list[TrainConfig], data, device: torch.device, *, sizes: list[int] | None = None,
                       strategies: tuple[str, ...] | None = None, steps: int = 4, warmup: int = 2,
                       log=None) -> dict[str, float]:
    """Images per second of packs of 1, 2, 4, ... of these members' models (up to all of them, or until the device
    runs out of memory), or of ``sizes``, each way a pack can step on this device (both on a CPU, batched on a GPU):
    fresh models on ``data`` (already on ``device``), timed after ``warmup`` steps; nothing is written. Keys:
    "STRATEGY/SIZE". A model that cannot be batched is measured side by side (threads) only, said in one line
    through ``log``."""
    from ..models import build_run_model
    from ..runtime import synchronize

    config = configs[0]
    strategies = strategies or (("batched", "threads") if device.type == "cpu" else ("batched",))
    sizes = sizes or sorted({k for k in (1, 2, 4, 8, 16, 32, 64) if k < len(configs)} | {len(configs)})
    rates: dict[str, float] = {}
    strategies = list(strategies)
    for strategy in strategies:
        for k in sizes:
            try:
                lanes = [probe_lane(c, data, device, strategy, build_run_model) for c in configs[:k]]
                step = pack_step(strategy, lanes[0])
            except NotBatchable as e:
                (log or print)(not_batchable_line(config.model, str(e)))
                if "threads" not in strategies:
                    strategies.append("threads")
                break
            try:
                indices = [torch.randint(0, len(data.train_images), (config.batch_size,), device=device)
                           for _ in lanes]
                lrs = [c.lr for c in configs[:k]]
                with step.one_thread_each():
                    for _ in range(warmup):
                        step(lanes, indices, lrs)
                    synchronize(device)
                    started = time.perf_counter()
                    for _ in range(steps):
                        step(lanes, indices, lrs)
                    synchronize(device)
                rates[f"{strategy}/{k}"] = k * config.batch_size * steps / (time.perf_counter() - started)
                step.close()
            except (RuntimeError, MemoryError) as e:
                if not is_out_of_memory(e):
                    raise
                break  # larger packs will not fit either
    return rates


def time_pack_step(configs: list[TrainConfig], data, device: torch.device, strategy: str) -> tuple[float, int]:
    """Steps per second of a pack of these members stepping ``strategy``'s way, and how many steps were timed: fresh
    models (``measure_pack_sizes``), built and stepped without touching torch's random generators."""
    from .budget import MEASURE_STEPS, WARMUP_STEPS

    size, steps = len(configs), MEASURE_STEPS[0] * 2
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        rates = measure_pack_sizes(configs, data, device, sizes=[size], strategies=(strategy,), steps=steps,
                                   warmup=WARMUP_STEPS, log=lambda line: None)
    img_per_s = rates.get(f"{strategy}/{size}") or max(rates.values())  # a model vmap cannot batch: threads
    return img_per_s / (size * configs[0].batch_size), steps


def probe_lane(config: TrainConfig, data, device: torch.device, strategy: str, build_run_model):
    """What a pack's step needs of a member, for a fresh model (no run folder)."""
    from types import SimpleNamespace

    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    classes = data.class_count() if config.conditional else 0
    lane = SimpleNamespace(model=build_run_model(config, data.shape[0], classes,
                                                           len(data.train_images)).to(device, dtype).train(),
                           config=config, objective=objective_of(config, len(data.train_images)), data=data, device=device, dtype=dtype,
                           precision=config.precision, state=SimpleNamespace(step=0, generator=torch.Generator(device=device)))
    lane.optimizer = make_optimizer(lane.model, config, device)
    if strategy == "threads":
        lane.train_step = make_train_step(lane.model, lane.optimizer, data.train_images, data.levels, config, dtype,
                                          config.precision, device, eager_only=True,
                                          labels=data.train_labels if config.conditional else None,
                                          generator=lane.state.generator)
    return lane


def choose_pack(rates: dict[str, float]) -> tuple[str, int]:
    """The way and size of the best measured throughput; the smallest pack within 5 % of it (a larger one gains
    nothing and holds more memory)."""
    best = max(rates.values())
    return min(((key.split("/")[0], int(key.split("/")[1])) for key, rate in rates.items() if rate >= 0.95 * best),
               key=lambda pair: (pair[1], pair[0] != "batched"))
