"""``convae tune``: a hyperparameter search on Optuna, its trials trained as packs of ordinary run folders.

    convae tune --model fc --space lr=log:1e-4:1e-2 --space beta=0.5:2 --trials 20 --out runs/search

* The space: ``KEY=low:high`` (uniform; integers where the setting is an integer), ``KEY=log:low:high``
  (log-uniform), ``KEY=a,b,c`` (a choice), for any setting of ``convae train`` and ``model-option.KEY``.
* Trials are asked from the study ``--pack`` at a time and trained together as a pack (``training/packed.py``)
  where their architectures allow; every epoch end reports the member's test -ELBO to its trial, and a pruned
  member leaves its pack while the others go on; a member whose loss turns non-finite is a failed trial, with its
  step. Each trial is a run folder ``DIR/runs/trial-NNNN`` that every other command takes.
* The study lives beside the runs (``DIR/study.db``, SQLite) or in any database Optuna takes (``--storage``), so
  several workers can share it. ``--trials N`` counts the study's total: the same command continues an interrupted
  search (an interrupted trial is asked again with its settings and resumes from its checkpoint; it is counted once),
  and a trial whose worker died (SIGKILL, a lost machine: no heartbeat for twice ``--heartbeat`` seconds) is asked
  again by the next worker that starts or looks for work, and resumes the same way.

Optuna is an optional dependency: ``pip install optuna`` (or ``convae[tune]``); the command says so where it is
missing.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig, parse_model_options, settings_fields
from ..data import load_for_config
from ..errors import ConfigError, TrainingInterrupted, UntrustedFigure, refuse_non_finite
from ..files import atomic_write_json
from ..models.build import check_buildable
from ..runs import RunDir
from ..runtime import Runtime, resolve_device
from ..training.packed import Pack, pack_key
from .sweep import OPTION_PREFIX, with_grid_point

NOT_IN_A_SPACE = {"out", "seed", "quiet", "extra", "model_options"}  # the search's own, or per option (model-option.K)
METRICS = ("elbo", "iw")
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
STUDY = "convae"


def optuna_module():
    try:
        import optuna
    except ImportError:
        raise ConfigError("convae tune needs Optuna: pip install optuna (or pip install 'convae[tune]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # the heartbeat and the retry of a dead worker's trials are marked experimental in Optuna; they are what a
    # shared study needs, chosen knowingly: their warnings would only repeat that on every trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with a heartbeat is what convae's packs need (they record the heartbeats themselves: ``Heartbeat``)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


# -- the space ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    name: str             # a setting, or model_option.KEY
    kind: str             # "uniform", "log", "choice"
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    integer: bool = False

    def suggest(self, trial):
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.kind == "log")
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "log")


def parse_space(items: list[str]) -> list[Dimension]:
    """``["lr=log:1e-4:1e-2", "beta=0.5:2", "model=fc,seed", "model-option.components=10,50"]`` -> dimensions, each
    value read as its setting's type (a one-line error naming the item otherwise)."""
    fields = {f.name: f for f in settings_fields()}
    dimensions, seen = [], set()
    for item in items:
        key, _, spec = item.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        option = name.startswith(OPTION_PREFIX)
        if not spec or (not option and (name not in fields or name in NOT_IN_A_SPACE)):
            why = ("--seed seeds the search (and every trial)" if name == "seed" else
                   "give KEY=low:high, KEY=log:low:high or KEY=a,b,c with KEY a setting of convae train or "
                   "model-option.KEY")
            raise ConfigError(f"--space {item}: {why}")
        if name in seen:
            raise ConfigError(f"--space {item}: {name} is in the space twice")
        seen.add(name)
        kind = "any" if option else fields[name].type.split("|")[0].strip()
        try:
            dimensions.append(_dimension(name, kind, spec.strip()))
        except ValueError as e:
            raise ConfigError(f"--space {item}: {e}") from None
    return dimensions


def _dimension(name: str, kind: str, spec: str) -> Dimension:
    def value(text: str):
        if kind == "any":
            return parse_model_options([f"x={text}"])["x"]
        if kind == "bool":
            return text.lower() in ("true", "1")
        return {"int": int, "float": float, "str": str}[kind](text)

    parts = spec.split(":")
    if "," in spec or kind in ("str", "bool") or len(parts) == 1:
        choices = tuple(value(v.strip()) for v in spec.split(","))
        if len(set(map(str, choices))) != len(choices):
            raise ValueError("a choice is given twice")
        return Dimension(name, "choice", choices=choices)
    log = parts[0] == "log"
    if log:
        parts = parts[1:]
    if len(parts) != 2:
        raise ValueError("a range is low:high or log:low:high")
    low, high = float(parts[0]), float(parts[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
        raise ValueError(f"low < high{' and low > 0 on a log scale' if log else ''} needed, got {low:g}:{high:g}")
    integer = kind == "int" or (kind == "any" and float(low).is_integer() and float(high).is_integer()
                                and "." not in parts[0] + parts[1])
    return Dimension(name, "log" if log else "uniform", low, high, integer=integer)


# -- the study ---------------------------------------------------------------------------------------------------


def open_study(out: Path, storage: str | None, sampler: str, pruner: str, seed: int, heartbeat: int = 60):
    """The study (created, or the one there), with this process's sampler and pruner. Workers record a heartbeat
    for their running trials every ``heartbeat`` seconds; a trial whose worker fell silent for twice that (a SIGKILL,
    a lost machine) is failed and asked again with its settings, and resumes from its checkpoint (``run_folder``)."""
    optuna = optuna_module()
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler}: choose from {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner}: choose from {', '.join(PRUNERS)}")
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    chosen_pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                     "hyperband": optuna.pruners.HyperbandPruner(),
                     "none": optuna.pruners.NopPruner()}[pruner]
    url = database_url(url)
    for attempt in range(5):
        try:
            backend = optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=stale_trial_callback()(max_retry=3))
            study = optuna.create_study(study_name=STUDY, storage=backend, load_if_exists=True,
                                        direction="minimize", pruner=chosen_pruner)
            break
        except Exception as e:  # a database that cannot be reached or opened: one line, after a few tries (workers
            if attempt == 4:     # starting together race to create its tables: the loser finds them made)
                raise ConfigError(f"--storage {masked(url)}: cannot open the study ({type(e).__name__}: "
                                  f"{masked(str(e).splitlines()[0])[:160]})") from None
            time.sleep(0.5 * (attempt + 1))
    study.sampler = sampler_for(sampler, seed, None)  # each trial's is set when it is asked (``suggest_settings``)
    return study


def sampler_for(kind: str, seed: int, trial_number: int | None):
    """The sampler that draws trial ``trial_number``'s settings: seeded by --seed and the trial's number in the study,
    which the database hands out once (to one worker, once across restarts), so no two trials of a study draw from
    the same sampler state, and the same search draws the same settings."""
    optuna = optuna_module()
    import numpy as np

    entropy = [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, 0 if trial_number is None else trial_number + 1]
    state = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state) if kind == "tpe" else optuna.samplers.RandomSampler(seed=state)


def suggest_settings(study, trial, space: list[Dimension], sampler: str, seed: int) -> dict:
    """Trial ``trial``'s settings, drawn by its own sampler (``sampler_for``)."""
    study.sampler = sampler_for(sampler, seed, trial.number)
    return {d.name: d.suggest(trial) for d in space}


def stale_trial_callback():
    """Optuna's callback that asks a dead worker's trial again: RetryHeartbeatStaleTrialCallback since Optuna 4.9
    (the old name, RetryFailedTrialCallback, warns of its removal in 6.0), the same behaviour under either name."""
    storages = optuna_module().storages
    return getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback


DRIVERS = {"psycopg2": "psycopg2", "psycopg": "psycopg", "pg8000": "pg8000", "asyncpg": "asyncpg",
           "pymysql": "pymysql", "mysqldb": "MySQLdb", "mysqlconnector": "mysql.connector"}
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "psycopg[binary]", "mysqldb": "mysqlclient",
                   "mysqlconnector": "mysql-connector-python"}


def database_url(url: str) -> str:
    """``url`` with the database driver named where it was left to SQLAlchemy: a bare ``postgresql://`` means
    psycopg 3 to SQLAlchemy 2.1 and psycopg2 to 2.0, so it is given the one installed here (psycopg2 first, what
    ``convae[tune]`` installs). A driver that is not installed is a ConfigError naming it and its package."""
    import importlib.util

    scheme, found, rest = url.partition("://")
    if not found:
        return url
    dialect, _, driver = scheme.partition("+")
    if dialect in ("postgresql", "postgres") and not driver:
        driver = next((d for d in ("psycopg2", "psycopg") if importlib.util.find_spec(d) is not None), None)
        if driver is None:
            raise ConfigError(f"--storage {masked(url)}: no PostgreSQL driver is installed here (pip install "
                              "psycopg2-binary, or psycopg[binary]; or name one: postgresql+DRIVER://...)")
        return f"postgresql+{driver}://{rest}"
    module = DRIVERS.get(driver)
    if module is not None and importlib.util.find_spec(module.split(".")[0]) is None:
        raise ConfigError(f"--storage {masked(url)}: the database driver {driver!r} is not installed (pip install "
                          f"{DRIVER_PACKAGES.get(driver, driver)})")
    return url


def masked(text: str) -> str:
    """``text`` with the password of every database URL in it hidden (``user:***@host``): what convae writes to a
    file, a page or the terminal, where a password must never be."""
    return re.sub(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)([^\s/]+)(@)", r"\1***\3", text)


def hides_a_password(url: str) -> bool:
    """Whether ``url`` holds a password, shown or hidden by ``masked``."""
    return masked(url) != url or ":***@" in url


def counted(study) -> list:
    """The trials that count towards --trials: finished (complete, pruned, failed), but not one interrupted and asked
    again (its repetition counts instead)."""
    from optuna.trial import TrialState

    every = study.get_trials(deepcopy=False)
    retried = {stale_trial_callback().retried_trial_number(t) for t in every}  # a dead worker's, asked again
    return [t for t in every
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
            (t.state == TrialState.FAIL and t.number not in retried and not t.user_attrs.get("interrupted")
             and not t.user_attrs.get("surplus") and not t.user_attrs.get("refused"))]


def surplus(study, trial, trials: int) -> bool:
    """Whether ``trial``, just asked, is one too many: workers sharing a study may ask at the same moment, each
    seeing room for one more; the trials asked first keep the places (they are numbered in the order asked)."""
    from optuna.trial import TrialState

    running = sorted(t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING)
    return len(counted(study)) + running.index(trial.number) >= trials


def run_folder(out: Path, trial) -> Path:
    """A trial's run folder; a trial asked again (after an interruption, or its worker's death: it inherits the
    first attempt's attributes) goes on in its first attempt's."""
    if trial.user_attrs.get("run"):
        return Path(trial.user_attrs["run"])
    return out / "runs" / f"trial-{trial.user_attrs.get('resumes', trial.number):04d}"


def tune(base: dict, space: list[Dimension], trials: int, out: str | Path, *, metric: str = "elbo",
         iw_samples: int = 100, sampler: str = "tpe", pruner: str = "median", seed: int = 0,
         storage: str | None = None, pack: int = 2, log=print, resume: str | None = None,
         heartbeat: int = 60) -> dict:
    """Run the search until the study holds ``trials`` counted trials; returns ``summarize(out)``."""
    from optuna.trial import TrialState

    out = Path(out)
    if trials < 1 or pack < 1 or heartbeat < 1:
        raise ConfigError(f"--trials, --pack and --heartbeat: positive integers, got {trials}, {pack} and "
                          f"{heartbeat}")
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric}: choose from {', '.join(METRICS)}")
    TrainConfig(**{**base, "seed": seed}).validate()  # the base settings, refused before anything is written
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        study = open_study(out, storage, sampler, pruner, seed, heartbeat)
        keep_space(study, space)
    except ConfigError:
        if created and not any(out.iterdir()):  # a search that never began leaves no folder behind
            out.rmdir()
        raise
    if storage is not None:  # where the study lives, for `convae tune summary DIR` (never its password)
        atomic_write_json(out / "study.json", {"storage": masked(storage)})
    while True:
        optuna_module().storages.fail_stale_trials(study)  # a dead worker's trials: failed, and asked again
        if len(counted(study)) >= trials:
            break
        room = trials - len(counted(study)) - sum(t.state == TrialState.RUNNING
                                                  for t in study.get_trials(deepcopy=False))
        if room <= 0:
            break  # the rest are running in other workers
        asked = [study.ask() for _ in range(min(pack, room))]
        configs = {}
        for k, trial in enumerate(asked):
            if surplus(study, trial, trials):
                trial.set_user_attr("surplus", True)  # not counted, never trained
                study.tell(trial, state=TrialState.FAIL)
                continue
            settings = suggest_settings(study, trial, space, sampler, seed)
            trial.set_user_attr("run", str(run_folder(out, trial)))
            try:
                config = TrainConfig(**{**with_grid_point(base, settings), "seed": seed, "quiet": True,
                                        "out": str(run_folder(out, trial)),
                                        "extra": {**base.get("extra", {}), "tune": str(out),
                                                  "trial": trial.number}}).validate()
                check_buildable(config)  # an option the model does not take, a value it refuses: before training
            except ConfigError as e:
                refuse(study, [trial], e, [t for t, _ in configs.values()] + asked[k + 1:])
            configs[trial.number] = (trial, config)
        groups: dict[tuple, list] = {}
        for trial, config in configs.values():
            groups.setdefault(pack_key(config), []).append((trial, config))
        packs = list(groups.values())
        for k, members in enumerate(packs):
            train_trials(study, members, metric, iw_samples, log, resume,
                         untrained=[t for later in packs[k + 1:] for t, _ in later])
    return summarize(out, storage)


def refuse(study, refused: list, error: ConfigError, others=()) -> None:
    """Trials whose settings convae refuses (a value out of range, an option the model does not take): FAIL at once,
    not counted; the search stops there in one line (every trial would meet the same space), and ``others``, the
    trials asked beside them and not trained, are given back (FAIL, not counted) for the next start to ask again."""
    from optuna.trial import TrialState

    for trial in refused:
        trial.set_user_attr("why", str(error))
    for trial in [*refused, *others]:
        trial.set_user_attr("refused", True)
        study.tell(trial, state=TrialState.FAIL)
    numbers = ", ".join(str(t.number) for t in refused)
    raise ConfigError(f"--space: trial {numbers}'s settings were refused ({error}); the trial is failed and not "
                      "counted; fix --space or the settings and run the search again") from None


def keep_space(study, space: list[Dimension]) -> None:
    """The study's space, kept in it; a study searched over another space is refused naming the difference (its
    trials and a new search's would be ranked as one search)."""
    wanted = [d.__dict__ | {"choices": list(d.choices)} for d in space]
    kept = study.user_attrs.get("space")
    if kept is not None and kept != json.loads(json.dumps(wanted)):
        def said(dims):
            return {d["name"]: json.dumps({k: v for k, v in d.items() if k != "name" and v not in (None, [], False)})
                    for d in dims}

        before, now = said(kept), said(json.loads(json.dumps(wanted)))
        changes = ([f"{k} was {before[k]}, now {now[k]}" for k in before if k in now and before[k] != now[k]]
                   + [f"{k} is new" for k in now if k not in before] + [f"{k} is gone" for k in before if k not in now])
        raise ConfigError("--space: the study was searched over another space (" + "; ".join(changes) + "); its "
                          "trials and this search's would be ranked as one: give another --out (or --storage) for a "
                          "new search, or the study's own --space to continue it")
    if kept is None:
        study.set_user_attr("space", wanted)


def train_trials(study, members: list, metric: str, iw_samples: int, log, resume: str | None,
                 untrained: list = ()) -> None:
    """One pack of trials: trained together, each epoch end reported to its trial (and pruned where the pruner
    says), then each told its value, its pruning or its failure."""
    from optuna.trial import TrialState

    configs = [c for _, c in members]
    trials = {str(Path(c.out)): t for t, c in members}
    runtime = Runtime()
    device = resolve_device(configs[0].device)
    data = load_for_config(configs[0], progress=False).subset(configs[0].train_limit, configs[0].test_limit).to(device)
    reported: dict[str, int] = {}

    def epoch_end(member):
        trial, record = trials[str(member.run_dir.path)], member.logger.metrics[-1] if member.logger.metrics else None
        if record is None or reported.get(str(member.run_dir.path)) == record["step"]:
            return None
        reported[str(member.run_dir.path)] = record["step"]
        trial.report(record["test_neg_elbo"], record["step"])
        if record["step"] < member.last_step and trial.should_prune():  # a trial at its end is complete
            return f"pruned by the search at step {record['step']} (test -ELBO {record['test_neg_elbo']:.2f})"
        return None

    strategy = "batched" if device.type != "cpu" else "threads"
    beat = Heartbeat(study, [t for t, _ in members])
    log(f"trials {', '.join(str(t.number) for t, _ in members)}: "
        + "; ".join(f"{t.number}: " + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                                  for k, v in t.params.items()) for t, _ in members))
    try:
        with beat:
            outcomes = Pack(configs, data=data, runtime=runtime, strategy=strategy, log=lambda line: None,
                            epoch_end=epoch_end, resume=resume).run()
    except ConfigError as e:  # a setting the model refuses when it is built (an option it does not take)
        refuse(study, [t for t, _ in members], e, untrained)
    except TrainingInterrupted:
        for trial, _ in members:  # asked again, with the same settings, by the next start: it resumes its folder
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"resumes": trial.user_attrs.get("resumes", trial.number)})
        raise
    for outcome in outcomes:
        tell_outcome(study, trials[str(Path(outcome.run_dir))], outcome, metric, iw_samples, log)


def tell_outcome(study, trial, outcome, metric: str, iw_samples: int, log) -> None:
    """Tell the study how a trial's run ended: pruned, failed (stopped, or a value that is not a finite number:
    never a result), or complete with its value."""
    from optuna.trial import TrialState

    if outcome.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        log(f"trial {trial.number}: {outcome.why}")
        return
    why = outcome.why if outcome.status == "stopped" else None
    if why is None:
        try:
            value = trial_value(Path(outcome.run_dir), metric, iw_samples)
            refuse_non_finite({metric_name(metric, iw_samples): value}, str(outcome.run_dir))
        except UntrustedFigure as e:
            why = str(e)
    if why is not None:
        trial.set_user_attr("why", why)
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number}: failed: {why}")
        return
    study.tell(trial, value)
    log(f"trial {trial.number}: {metric_name(metric, iw_samples)} {value:.2f}")


class Heartbeat:
    """While a pack trains, its trials' heartbeats go to the study every ``heartbeat_interval`` seconds, from a
    thread, as ``study.optimize`` does for its own trials (the storage's API for it takes the trial's id, which
    Optuna keeps private; tested against Optuna 5)."""

    def __init__(self, study, trials: list):
        self.storage, self.ids = study._storage, [t._trial_id for t in trials]
        self.interval = self.storage.get_heartbeat_interval() or 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, name="convae-heartbeat", daemon=True)

    def beat(self) -> None:
        while True:
            for trial_id in self.ids:
                self.storage.record_heartbeat(trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self):
        if self.interval:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def metric_name(metric: str, iw_samples: int) -> str:
    return "test -ELBO" if metric == "elbo" else f"IW bound (K = {iw_samples})"


def trial_value(run: Path, metric: str, iw_samples: int) -> float:
    """The figure a finished trial is judged by: its last test -ELBO, or its IW bound on the test images."""
    if metric == "elbo":
        return RunDir(run).metrics()[-1]["test_neg_elbo"]
    from ..evaluation.evaluate import evaluate_run
    from ..runs import open_run

    return evaluate_run(open_run(run, "auto"), iw_samples=iw_samples, pictures=False)["iw_nll"]


# -- the results ---------------------------------------------------------------------------------------------------


def summarize(out: str | Path, storage: str | None = None, top: int = 10) -> dict:
    """The best trial, the top ``top`` as rows, the pruned and failed counts and the parameters' importances."""
    optuna = optuna_module()
    from optuna.trial import TrialState

    out = Path(out)
    url = database_url(storage or study_location(out))
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the summary's lines, not Optuna's notes on importances
    study = optuna.load_study(study_name=STUDY, storage=url)
    url = masked(url)
    trials = counted(study)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    rows = [{"trial": t.number, "value": t.value, "params": t.params, "run": t.user_attrs.get("run")}
            for t in complete[:top]]
    importances = {}
    if len(complete) >= 2 and study.user_attrs.get("space"):
        try:
            importances = dict(optuna.importance.get_param_importances(study))
        except (RuntimeError, ValueError, ZeroDivisionError):
            importances = {}
    return {"study": url, "trials": len(trials), "complete": len(complete),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": [{"trial": t.number, "why": t.user_attrs.get("why", "")} for t in trials
                       if t.state == TrialState.FAIL],
            "best": rows[0] if rows else None, "top": rows, "importances": importances}


def study_location(out: Path) -> str:
    """Where the search in ``out`` keeps its study: DIR/study.db, or the database DIR/study.json names (written by
    ``tune`` from --storage, its password hidden: then the user gives it again)."""
    if (out / "study.db").is_file():
        return f"sqlite:///{(out / 'study.db').resolve()}"
    try:
        recorded = json.loads((out / "study.json").read_text())["storage"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{out}: no study here (no study.db or study.json; give --storage URL for one "
                          "elsewhere)") from None
    if hides_a_password(recorded):
        raise ConfigError(f"{out}: its study lives in {recorded} ({out / 'study.json'}; the password is not kept): "
                          "give --storage with it")
    return recorded


def format_summary(summary: dict) -> str:
    best = summary["best"]
    lines = [f"{summary['trials']} trial(s): {summary['complete']} complete, {summary['pruned']} pruned, "
             f"{len(summary['failed'])} failed ({summary['study']})"]
    if best:
        lines.append(f"best: trial {best['trial']}, {best['value']:.2f}, "
                     + ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                                 for k, v in best["params"].items()) + f" ({best['run']})")
        keys = list(best["params"])
        lines += ["", "| trial | value | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for row in summary["top"]:
            lines.append(f"| {row['trial']} | {row['value']:.2f} | " + " | ".join(
                f"{row['params'].get(k):.4g}" if isinstance(row["params"].get(k), float) else str(row["params"].get(k))
                for k in keys) + " |")
    if summary["importances"]:
        lines.append("")
        lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in summary["importances"].items()))
    for failed in summary["failed"]:
        lines.append(f"trial {failed['trial']} failed: {failed['why']}")
    return "\n".join(lines)


def write_summary(out: str | Path, storage: str | None = None) -> dict:
    """DIR/summary.json, summary.md and report.html (the optimisation history, the parallel coordinates of the
    settings tried, the importances)."""
    from ..files import atomic_write_text
    from ..reporting.html import write_tune_report

    summary = summarize(out, storage)
    atomic_write_json(Path(out) / "summary.json", summary)
    atomic_write_text(Path(out) / "summary.md", format_summary(summary) + "\n")
    url = database_url(storage or study_location(Path(out)))  # the summary's own is masked
    write_tune_report(summary, search_figures(url, summary), Path(out) / "report.html")
    return summary


def search_figures(url: str, summary: dict) -> list:
    """(caption, matplotlib figure) of the search, where there is enough to draw."""
    optuna = optuna_module()
    from optuna.visualization import matplotlib as plots

    study = optuna.load_study(study_name=STUDY, storage=url)
    figures = []
    if summary["complete"]:
        figures.append(("The value of each trial in the order asked, and the best so far (pruned and failed trials "
                        "are left out)", plots.plot_optimization_history(study).figure))
        if len(summary["best"]["params"]) > 1 or summary["complete"] > 1:
            figures.append(("Parallel coordinates: each complete trial's settings, coloured by its value",
                            plots.plot_parallel_coordinate(study).figure))
    if summary["importances"]:
        figures.append(("How much each setting's choice explains of the values", 
                        plots.plot_param_importances(study).figure))
    for _, figure in figures:
        figure.set_size_inches(6.4, 3.8)
    return figures


__all__ = ["Dimension", "format_summary", "masked", "open_study", "parse_space", "summarize", "tune", "write_summary"]
