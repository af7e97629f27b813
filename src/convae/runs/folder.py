"""The run folder: what it holds, where each file lives, and the decisions about it.

    RUN/config.json            every setting, the environment, the data's fingerprint (versioned)
    RUN/metrics.jsonl          one record per epoch        RUN/steps.jsonl    one record every --progress-every steps
    RUN/log.txt                the lines printed           RUN/tb/            TensorBoard event files
    RUN/images/                the seed's picture per epoch
    RUN/checkpoints/           step-N.safetensors + step-N.json (``checkpoint.py``)
    RUN/eval/                  what ``convae eval`` and ``convae artifacts`` wrote (eval.json, iw_kK.json, pictures)
    RUN/report.html            the report page
    RUN/.lock                  held by the one process that writes the folder (``lock.py``)

``RunDir`` is the one place that reads and writes config.json, decides whether a command starts a run, resumes it or
finds it complete, checks that a resumed run sees its own data, and trims what a crashed attempt logged past its
last checkpoint. Training, evaluation, inference, the report and the experiment scripts all go through it.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..version import __version__
from ..config import RESUMABLE, TrainConfig, option_name, parse_duration
from ..errors import CheckpointError, ConfigError, FileSystemFault
from ..faults import describe_os_error
from ..files import atomic_write_json, atomic_write_jsonl, read_jsonl
from ..models.build import factory_defaults
from ..models.registry import require_model
from .checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .lock import RunLock

FORMAT = "convae-run"
VERSION = 1  # of config.json's layout; runs written before it was recorded have none and read as 1


class RunDir:
    """A run folder on disk (which may not exist yet)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.code_changed: str | None = None  # read_config's line where the model's plug-in code changed since

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- where things are ---------------------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def steps_file(self) -> Path:
        return self.path / "steps.jsonl"

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def images(self) -> Path:
        return self.path / "images"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def report_file(self) -> Path:
        return self.path / "report.html"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    # -- reading ----------------------------------------------------------------------------------------------------

    def check_folder(self, what: str = "run folder") -> None:
        """A folder holding config.json, or a one-line error naming what is wrong."""
        if self.path.is_file():
            raise ConfigError(f"{self.path}: is a file; give the run folder (the one holding config.json)")
        if not self.path.is_dir():
            raise ConfigError(f"{self.path}: no such {what}")
        if not self.config_file.is_file():
            raise ConfigError(f"{self.path}: not a convae run folder (no config.json)")

    def read_settings(self) -> dict:
        """config.json: the settings under "config" and what was recorded beside them."""
        self.check_folder()
        try:
            settings = json.loads(self.config_file.read_text())
            if not isinstance(settings, dict) or not isinstance(settings["config"], dict):
                raise TypeError("settings are not a mapping")
        except (ValueError, KeyError, TypeError) as e:  # JSON and UTF-8 errors are ValueErrors
            raise ConfigError(f"{self.config_file}: unreadable ({type(e).__name__}: {str(e)[:120]})") from None
        version = settings.get("version", 1)
        if isinstance(version, int) and version > VERSION:
            raise ConfigError(f"{self.config_file}: written by a newer convae ({settings.get('convae', '?')}, run "
                              f"folder format {version}); this convae {__version__} reads format {VERSION}")
        return settings

    def read_config(self, settings: dict | None = None) -> TrainConfig:
        """The run's settings as a validated ``TrainConfig``, its model made buildable from the code config.json
        names (``registry.require_model``: an installed plug-in, or one the user named with --plugin)."""
        settings = settings or self.read_settings()
        saved = settings["config"]
        if isinstance(saved.get("model"), str):
            self.code_changed = require_model(saved["model"], settings.get("model_code"), str(self.config_file))
        try:
            return TrainConfig.from_dict(saved).validate()
        except ConfigError as e:
            raise ConfigError(f"{self.config_file}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{self.config_file}: a setting convae did not write ({type(e).__name__}: "
                              f"{str(e)[:120]})") from None

    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_file)

    def checkpoint_files(self) -> list[Path]:
        """The checkpoints' JSON files, oldest first."""
        return list_checkpoints(self.checkpoints)

    def latest_checkpoint(self) -> Checkpoint:
        return latest_checkpoint(self.checkpoints)

    def checkpoint_steps(self) -> list[int]:
        """The steps of the checkpoints kept, oldest first."""
        return [int(p.stem.split("-")[1]) for p in self.checkpoint_files()]

    def checkpoint_at(self, step: int) -> Checkpoint:
        """The checkpoint of ``step`` (a CheckpointError naming the steps kept where there is none)."""
        path = self.checkpoints / f"step-{step:08d}.json"
        if not path.is_file():
            raise CheckpointError(f"{self.path}: no checkpoint of step {step} (kept: {self.checkpoint_steps()})")
        return load_checkpoint(path)

    def last_good(self, program: str = "convae") -> str:
        """Which checkpoint survives a fault, and the command that continues from it (``program``: convae as the
        user started it)."""
        found = self.checkpoint_files()
        if not found:
            return "no checkpoint was written"
        return (f"last good checkpoint: {found[-1]}; once the cause is fixed: {program} train --resume "
                f"{shlex.quote(str(self.path))}")

    # -- starting, resuming ---------------------------------------------------------------------------------------

    def check_same_data(self, fingerprint: str, data) -> None:
        """A resumed run must see the data it started with: the fingerprint in its config.json (runs from before
        fingerprints were recorded are not checked)."""
        try:
            recorded = json.loads(self.config_file.read_text()).get("data", {})
        except (OSError, ValueError):
            return
        if recorded.get("fingerprint") not in (None, fingerprint):
            raise ConfigError(f"--resume {self.path}: the data differ from the run's ({recorded.get('name')}, "
                              f"{recorded.get('train_images')} + {recorded.get('test_images')} images, fingerprint "
                              f"{recorded['fingerprint'][:12]}; now {data.name}, {len(data.train_images)} + "
                              f"{len(data.test_images)} images, {fingerprint[:12]}); resume with the data it started "
                              "with, or start a new run")

    def create(self, settings: dict, lock: RunLock | None) -> RunLock:
        """The folder, its lock (``lock``, or a new one), ``images/`` and ``config.json``; a fault here removes what
        this call made and says nothing was trained. Returns the lock."""
        made = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = lock or RunLock(self.path, "convae train").acquire()
            self.images.mkdir(exist_ok=True)
            self.write_settings(settings)
        except OSError as e:
            if lock is not None:
                lock.release()
            if made:
                shutil.rmtree(self.path, ignore_errors=True)
            raise FileSystemFault(f"{describe_os_error(e)}; nothing was trained") from None
        return lock

    def write_settings(self, settings: dict) -> None:
        atomic_write_json(self.config_file, {"format": FORMAT, "version": VERSION, **settings})

    def trim_to(self, step: int) -> None:
        """Drop what an attempt logged after ``step`` (the checkpoint a resume starts from; 0 for a new run), which
        is about to be logged again: steps.jsonl and metrics.jsonl keep their records up to it."""
        for path in (self.steps_file, self.metrics_file):
            atomic_write_jsonl(path, [r for r in read_jsonl(path) if r["step"] <= step])

    def save_checkpoint(self, **kwargs) -> Path:
        """``checkpoint.save_checkpoint`` into this run's checkpoints/."""
        return save_checkpoint(self.checkpoints, **kwargs)

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    def write_status(self, status: dict) -> None:
        """Why a run stopped for good (e.g. a member of a sweep whose loss turned non-finite)."""
        atomic_write_json(self.status_file, status)

    def read_status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text()) if self.status_file.is_file() else {}
        except (ValueError, OSError):
            return {}

    # -- evaluation outputs -----------------------------------------------------------------------------------------

    def eval_file(self, name: str) -> Path:
        return self.eval_dir / name

    def write_eval(self, name: str, obj) -> Path:
        """An evaluation output (JSON), written whole or not at all."""
        self.eval_dir.mkdir(exist_ok=True)
        atomic_write_json(self.eval_file(name), obj)
        return self.eval_file(name)

    def read_eval(self, name: str) -> dict | None:
        """An evaluation output, or None where there is none (or it is not readable JSON)."""
        try:
            return json.loads(self.eval_file(name).read_text()) if self.eval_file(name).is_file() else None
        except (ValueError, OSError):
            return None


@dataclass
class Start:
    """Where a training run begins, decided by rank 0 (the only rank that reads the run folder) and sent to the
    others: a new folder, or the newest checkpoint of an existing one and the metrics logged up to it."""

    run: RunDir
    checkpoint: Checkpoint | None = None
    metrics: list[dict] = field(default_factory=list)


def new_run_dir(out: str | None) -> RunDir:
    """A fresh run folder. A convae folder that never reached its first checkpoint (a run stopped while it started
    up) is started again: nothing in it can be resumed."""
    if out is None:
        base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        return RunDir(path)
    run = RunDir(out)
    unstarted = run.config_file.is_file() and not run.checkpoint_files()
    if run.path.exists() and not unstarted and (not run.path.is_dir() or any(run.path.iterdir())):
        raise ConfigError(f"--out {run.path}: already exists and is not empty (use --resume {run.path} to continue "
                          "that run)")
    return run


def plan_start(config: TrainConfig, resume: bool, auto_resume: bool, at_step: int | None = None) -> Start:
    """Start the run in ``config.out`` (or a new folder), or resume it from its newest checkpoint (or from the one of
    step ``at_step``, which must be kept)."""
    if auto_resume and config.out is not None:
        resume = bool(RunDir(config.out).checkpoint_files())
    if not resume:
        return Start(new_run_dir(config.out))
    run = RunDir(config.out)
    never_started(run)
    checkpoint = run.latest_checkpoint() if at_step is None else run.checkpoint_at(at_step)
    if checkpoint.meta.get("model") != config.model:
        raise ConfigError(f"--resume {run.path}: checkpoint is of model {checkpoint.meta.get('model')!r}, "
                          f"config says {config.model!r}")
    step = checkpoint.meta["step"]
    return Start(run, checkpoint, [m for m in run.metrics() if m["step"] <= step])


def never_started(run: RunDir) -> None:
    """A ConfigError for a run folder with no checkpoint to resume from."""
    if not run.checkpoint_files():
        raise ConfigError(f"--resume {run.path}: the run never reached its first checkpoint; start it again with "
                          f"--out {run.path} (or --auto-resume --out {run.path})")


def resumed_config(run: RunDir, given: dict, preset: str | None, presets: dict) -> TrainConfig:
    """The settings of the run in ``run`` with the options ``given`` on the command line applied. Options and a
    ``preset`` that ask for the run's own values are fine (a restarted or re-queued job repeats its command); only the
    resumable settings (how a run goes on: epochs, device, checkpoints, output) may differ from the run's own."""
    if not run.path.is_dir():
        raise ConfigError(f"--resume {run.path}: no such folder")
    if not run.config_file.is_file():
        raise ConfigError(f"--resume {run.path}: no config.json there (not a convae run folder)")
    never_started(run)
    settings = run.read_settings()
    saved = settings["config"]
    if "out" in given and Path(given["out"]) != run.path:
        raise ConfigError(f"--out {given['out']}: a resumed run stays in its own folder {run.path} (drop --out, or "
                          "start a new run without --resume)")
    asked = {**{k: (v, f"--preset {preset}") for k, v in presets.get(preset, {}).items()},
             **{k: (v, option_name(k)) for k, v in given.items() if k != "out"}}
    defaults = factory_defaults(saved.get("model")) if isinstance(saved.get("model"), str) else {}

    def same(key, value) -> bool:  # a model option given at its factory's default is the run's own, recorded or not
        if key == "model_options" and isinstance(value, dict) and isinstance(saved.get(key), dict):
            return {**defaults, **saved[key]} == {**defaults, **value}
        if key == "time_budget" and value and saved.get(key):  # 60m is 1h
            return parse_duration(value) == parse_duration(saved[key])
        return saved.get(key) == value

    changed = [(k, v, said) for k, (v, said) in asked.items() if k not in RESUMABLE and not same(k, v)]
    if changed:
        k, v, said = changed[0]
        what = f"its {k} is {v!r}, " if said.startswith("--preset") else ""
        raise ConfigError(f"{said}: cannot change when resuming {run.path} ({what}the run's is {saved.get(k)!r}; only "
                          f"{', '.join(option_name(n) for n in sorted(RESUMABLE))} can)")
    resumable = {k: v for k, v in given.items() if k in RESUMABLE}  # a preset's own epochs do not extend a run
    return run.read_config({**settings, "config": {**saved, **resumable, "out": str(run.path)}})


__all__ = ["CheckpointError", "RunDir", "Start", "new_run_dir", "plan_start", "resumed_config"]
