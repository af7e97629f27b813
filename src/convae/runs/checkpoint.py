"""Checkpoints: tensors in a safetensors file, everything else in a JSON file beside it.

``checkpoints/step-00001875.safetensors`` holds the model, the optimizer's tensors and the RNG states;
``checkpoints/step-00001875.json`` holds the rest (epoch, step, optimizer hyper-parameters, the tensors file's
SHA-256). Each file is written atomically and the JSON last, so a checkpoint exists only once both are whole;
a crash mid-write leaves the previous checkpoint as the latest. Nothing but this module reads or writes a
checkpoint's JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..version import __version__
from ..errors import CheckpointError
from ..files import atomic_write_bytes, atomic_write_json

FORMAT = "convae-checkpoint"
VERSION = 1
EMA_PREFIX = "ema."  # the averaged weights of --ema, beside the model's ("ema.<parameter name>")
# BatchNorm's population statistics of the weights a checkpoint evaluates with ("population.<buffer name>";
# convae.training.normalisation), beside the running averages training keeps in the model's own buffers
POPULATION_PREFIX = "population."
_NAME = re.compile(r"^step-(\d{8,})\.json$")


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    meta: dict
    path: Path


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    # a capturable optimizer (CUDA graphs) keeps its learning rate in a tensor; JSON gets the number
    groups = [{k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rank_states: list[dict[str, torch.Tensor]], meta: dict, keep: int = 2,
                    shared: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the checkpoint for ``meta["step"]`` and delete all but the newest ``keep``.

    ``rank_states[r]`` holds what differs between the processes of a torchrun group (each one's RNG states and
    running sums, named like ``rng.cpu`` or ``extra.epoch_loss_sum``): rank 0's under those names, as a
    single-process run writes them, rank r's under ``rank{r}.``; ``meta["world_size"]`` says how many there are.
    ``shared``: more tensors the same on every rank, under their own names (e.g. ``ema.*``, the averaged weights).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    optimizer_tensors, optimizer_meta = _split_optimizer_state(optimizer.state_dict())
    tensors.update(optimizer_tensors)
    tensors.update({k: v.detach().contiguous() for k, v in (shared or {}).items()})
    for rank, state in enumerate(rank_states):
        prefix = f"rank{rank}." if rank else ""
        tensors.update({prefix + k: v.detach().contiguous() for k, v in state.items()})
    meta = {**meta, "world_size": len(rank_states)}
    blob = save_safetensors({k: v.cpu() for k, v in tensors.items()})

    stem = f"step-{meta['step']:08d}"
    atomic_write_bytes(folder / f"{stem}.safetensors", blob)
    full_meta = {"format": FORMAT, "version": VERSION, "convae": __version__, **meta, "optimizer": optimizer_meta,
                 "tensors_file": f"{stem}.safetensors", "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    full_meta["meta_sha256"] = meta_digest(full_meta)
    atomic_write_json(folder / f"{stem}.json", full_meta)

    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return folder / f"{stem}.json"


def meta_digest(meta: dict) -> str:
    """SHA-256 of a checkpoint's JSON content (all but this digest): the JSON file checks itself, as the tensors'
    SHA-256 inside it checks the tensors file."""
    content = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _check_meta(meta: dict, json_path: Path) -> None:
    """The fields training reads, with the types it needs (checkpoints from before ``meta_sha256`` have no digest:
    this is what stands between a hand edit and a crash)."""
    def integer(value, least):
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    checks = {"step": integer(meta.get("step"), 0), "epoch": integer(meta.get("epoch"), 0),
              "world_size": integer(meta.get("world_size", 1), 1), "model": isinstance(meta.get("model"), str),
              "train_seconds": isinstance(meta.get("train_seconds"), (int, float))
              and not isinstance(meta.get("train_seconds"), bool) and meta.get("train_seconds") >= 0,
              "optimizer": isinstance(meta.get("optimizer"), dict)
              and isinstance(meta["optimizer"].get("param_groups"), list)
              and all(isinstance(g, dict) for g in meta["optimizer"]["param_groups"])
              and isinstance(meta["optimizer"].get("scalars", {}), dict)}
    for field, fine in checks.items():
        if not fine:
            raise CheckpointError(f"{json_path}: field {field!r} is {meta.get(field)!r}, not a value convae wrote")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The checkpoints' JSON files, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if _NAME.match(p.name)), key=lambda p: int(_NAME.match(p.name)[1]))


def load_checkpoint(json_path: str | Path) -> Checkpoint:
    """Read and verify one checkpoint; any defect is a CheckpointError naming the file."""
    json_path = Path(json_path)
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: not a readable checkpoint ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not a convae checkpoint")
    version = meta.get("version")
    if isinstance(version, int) and version > VERSION:
        raise CheckpointError(f"{json_path}: written by a newer convae ({meta.get('convae', 'unknown version')}, "
                              f"checkpoint format {version}); this convae {__version__} reads format {VERSION}: "
                              "upgrade convae to resume or evaluate it")
    if version != VERSION:
        raise CheckpointError(f"{json_path}: checkpoint format {version!r} is not {VERSION}")
    if "meta_sha256" in meta and meta_digest(meta) != meta["meta_sha256"]:
        raise CheckpointError(f"{json_path}: corrupt (its content does not match its own SHA-256)")
    _check_meta(meta, json_path)
    tensor_path = json_path.parent / str(meta.get("tensors_file", ""))
    try:
        blob = tensor_path.read_bytes()
    except OSError:
        raise CheckpointError(f"{tensor_path}: tensors file missing") from None
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise CheckpointError(f"{tensor_path}: corrupt (SHA-256 does not match {json_path.name})")
    try:
        tensors = load_safetensors(blob)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{tensor_path}: not a safetensors file ({e})") from None
    return Checkpoint(tensors, meta, json_path)


def latest_checkpoint(folder: str | Path) -> Checkpoint:
    found = list_checkpoints(folder)
    if not found:
        raise CheckpointError(f"{folder}: no checkpoint to resume from")
    try:
        return load_checkpoint(found[-1])
    except CheckpointError as e:
        if len(found) < 2:
            raise
        older, newest = found[-2], found[-1]
        raise CheckpointError(f"{e}; the checkpoint before it, {older.name}, is kept beside it: to continue from "
                              f"there, move {newest.name} and {newest.with_suffix('.safetensors').name} out of "
                              f"{Path(folder)}") from None


def restore(checkpoint: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load model (and optimizer) state; a shape or name mismatch means the checkpoint is from another model."""
    tensors = checkpoint.tensors
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{checkpoint.path}: does not fit this model ({first[1].strip() if len(first) > 1 else first[0]})") from None
    if optimizer is not None:
        tensor_lr = [isinstance(g["lr"], torch.Tensor) for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(_join_optimizer_state(tensors, checkpoint.meta["optimizer"]))
        except (KeyError, ValueError, TypeError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"{checkpoint.path}: its optimizer state does not fit this model "
                                  f"({type(e).__name__}: {str(e)[:120]})") from None
        for group, was_tensor in zip(optimizer.param_groups, tensor_lr):
            if was_tensor and not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(group["lr"], device=group["params"][0].device)


def section(checkpoint: Checkpoint, prefix: str, rank: int = 0) -> dict[str, torch.Tensor]:
    """The tensors saved under ``prefix.`` (e.g. "rng", "extra") for ``rank``, with the prefix removed."""
    prefix = f"rank{rank}.{prefix}." if rank else prefix + "."
    found = {k[len(prefix):]: v for k, v in checkpoint.tensors.items() if k.startswith(prefix)}
    if not found:
        raise CheckpointError(f"{checkpoint.path}: has no {prefix[:-1]!r} state (world size "
                              f"{checkpoint.meta.get('world_size', 1)})")
    return found


def weights_only(checkpoint: Checkpoint) -> tuple[bytes, dict]:
    """The checkpoint's weights (the model's and the averaged ones: what evaluation reads) without the optimizer's
    state and RNG states, as (safetensors bytes, JSON content): a smaller file to carry a finished run to another
    machine. Its JSON says ``weights_only``, and checks itself as every checkpoint's does."""
    blob = save_safetensors({k: v for k, v in checkpoint.tensors.items()
                             if k.startswith(("model.", EMA_PREFIX, POPULATION_PREFIX))})
    meta = {**checkpoint.meta, "tensors_sha256": hashlib.sha256(blob).hexdigest(), "weights_only": True}
    meta["meta_sha256"] = meta_digest(meta)
    return blob, meta


@torch.no_grad()
def use_averaged_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> bool:
    """Put a checkpoint's averaged weights into ``model`` (for evaluation and inference); False if it has none."""
    found = {name: tensors[EMA_PREFIX + name] for name, _ in model.named_parameters() if EMA_PREFIX + name in tensors}
    if not found:
        return False
    for name, p in model.named_parameters():
        p.copy_(found[name])
    return True


@torch.no_grad()
def use_population_statistics(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    """Put a checkpoint's BatchNorm population statistics (of the weights it evaluates with) into ``model``: what
    evaluation, export and ``convae.load`` normalise by. Returns what the model now normalises by, as eval.json says
    it: None for a model without BatchNorm."""
    buffers = dict(model.named_buffers())
    wanted = [n for n in buffers if n.endswith((".running_mean", ".running_var"))]
    if not wanted:
        return None
    found = {n: tensors[POPULATION_PREFIX + n] for n in wanted if POPULATION_PREFIX + n in tensors}
    if len(found) != len(wanted):
        return "running averages (a checkpoint written before convae kept population statistics)"
    for name, value in found.items():
        buffers[name].copy_(value)
    return "population statistics of these weights (recomputed over training images when the checkpoint was written)"
