"""Where a run executes: its device, and, under torchrun, its place in the process group.

One room for what training, evaluation and bench all need to know about the machine: which device, how to wait
for it, and — when ``torchrun`` (or any launcher that sets ``RANK`` and ``WORLD_SIZE``) started us — the rank,
the world size, the collectives, and whether this process is the one that writes files (rank 0). Outside
torchrun a ``Runtime`` is a world of one and every collective is the identity, so the loop has one code path.

Backends: gloo for CPU tensors and NCCL for CUDA tensors, in one process group (``"cpu:gloo,cuda:nccl"``), so
DDP's gradient all-reduce on a GPU goes through NCCL while small control messages (a stop flag, a checkpoint's
RNG states) can stay on the CPU.
"""

from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import TrainConfig
from .errors import ConfigError, DistributedError
from .faults import first_line

DEFAULT_TIMEOUT_S = TrainConfig.dist_timeout  # --dist-timeout's default

def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` takes a GPU when there is one (``cuda:LOCAL_RANK`` under torchrun), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"--device cuda: LOCAL_RANK {local_rank}, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s); start at most that many processes per node")
        return torch.device("cuda", local_rank)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps: MPS is not available on this machine")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware here (CUDA with bf16, or a CPU with AVX512-BF16 / AMX; an AVX2-only CPU
    emulates them, many times slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass
class Runtime:
    """This process's rank and world; ``world_size == 1`` and ``distributed == False`` outside torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    owns_group: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S

    # -- forming and leaving the group ------------------------------------------------------------------------

    @classmethod
    def from_environment(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> "Runtime":
        """Join the process group torchrun describes (or the one already joined); a world of one without it."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True, False,
                       timeout_s)
        if not launched_by_torchrun():
            return cls(timeout_s=timeout_s)
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
        except ValueError:
            raise ConfigError("RANK / WORLD_SIZE / LOCAL_RANK: not integers in the environment") from None
        if not dist.is_available():
            raise ConfigError("torchrun: this torch build has no torch.distributed")
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(min(local_rank, torch.cuda.device_count() - 1))
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        timeout = datetime.timedelta(seconds=timeout_s)
        try:
            dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout,
                                    store=_attempt_store(world, timeout))
        except (RuntimeError, ValueError, OSError) as e:  # DistStoreError, DistNetworkError are RuntimeErrors
            first = first_line(e, 300)
            raise DistributedError(f"rank {rank} of {world}: could not join the process group at {where} "
                                   f"(--dist-timeout {timeout_s:g} s): {type(e).__name__}: {first}") from None
        return cls(rank, world, local_rank, True, True, timeout_s)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone prints, draws the bar and writes files."""
        return self.rank == 0

    @property
    def backend(self) -> str | None:
        return dist.get_backend() if self.distributed else None

    def describe(self, device: torch.device) -> dict:
        """What config.json and metrics.jsonl record about the group."""
        places = self.all_gather((str(device), os.uname().nodename))
        return {"world_size": self.world_size, "backend": self.backend, "rank_devices": [d for d, _ in places],
                "nodes": len({node for _, node in places})}

    # -- splitting work -------------------------------------------------------------------------------------------

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise ConfigError(f"--batch-size {batch_size}: the global batch must divide evenly among "
                              f"{self.world_size} processes (try {batch_size - batch_size % self.world_size or self.world_size})")

    def shard(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous ``batch / world`` slice of one global batch of sample indices."""
        per_rank = len(global_batch) // self.world_size
        return global_batch[self.rank * per_rank:(self.rank + 1) * per_rank]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training step calls: DDP (with SyncBatchNorm on CUDA) in a group, else the model itself.

        ``model`` is converted in place, so checkpoints keep writing its state_dict with unprefixed keys.
        """
        if not self.distributed:
            return model
        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # converts the BatchNorm layers inside, in place
            return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(model)

    def batchnorm_mode(self, device: torch.device) -> str:
        if not self.distributed or self.world_size == 1:
            return "global"
        return "sync" if device.type == "cuda" else "per-rank"

    # -- collectives (the identity in a world of one) ---------------------------------------------------------

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                                        "min": dist.ReduceOp.MIN}[op])
        return tensor

    def any(self, *flags: bool) -> list[bool]:
        """Each flag, true if it is true on any rank: how ranks agree to stop or checkpoint at the same step."""
        if not self.distributed:
            return [bool(f) for f in flags]
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32)
        self.all_reduce(t, "max")
        return [bool(v) for v in t.tolist()]

    def all_gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (pickled; a checkpoint of the seed model is about 23 MB)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere. DDP does this before every forward; after the last step of an
        epoch we do it once more so evaluation and checkpoints see one model on every rank."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def agree_on_errors(self, error: Exception | None) -> None:
        """Every rank raises the first error any rank met during setup, so no rank waits forever for a peer that
        has already given up. The message says which rank met it when that was not rank 0."""
        if not self.distributed:
            if error is not None:
                raise error
            return
        found = self.all_gather(None if error is None else _portable(error))
        for rank, item in enumerate(found):
            if item is not None:
                kind, message = item
                if rank != 0:
                    message = f"rank {rank}: {message}"
                raise kind(message)


def _attempt_store(world: int, timeout: datetime.timedelta):
    """Under a torchrun agent, the agent's store with a prefix of this restart attempt; None (env://) elsewhere.

    A restarted group reuses the agent's store, and the keys the default group writes (each rank's address)
    carry no attempt number: a new rank 1 could read the address of the rank 0 that died and fail with
    "connection refused" (seen here, now and then). The prefix keeps each attempt's keys apart."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timeout)
    return dist.PrefixStore(f"convae/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def is_peer_failure(error: BaseException) -> bool:
    """A collective failed because another process went away (killed, crashed, its node lost)."""
    text = str(error)
    return isinstance(error, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport",
                            "NCCL error", "ProcessGroupNCCL", "Socket Timeout"))


def _portable(error: Exception) -> tuple[type, str]:
    """An error as (type, message), falling back to RuntimeError for a type that cannot travel by pickle."""
    try:
        pickle.dumps(type(error))
        return type(error), str(error)
    except Exception:  # a local class, say
        return RuntimeError, f"{type(error).__name__}: {error}"
