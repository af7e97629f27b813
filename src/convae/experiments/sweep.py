"""``convae sweep``: a researcher's unit of work — seeds for an error bar, settings on a grid — as one command.

    convae sweep --preset fast --seeds 3 --grid beta=0.5,1,2,4 --out runs/beta

Every member is an ordinary run folder (``DIR/runs/beta=0.5,seed=0``, ...), which ``eval``, ``report``, ``load``,
``sample`` and ``export`` take as they are; ``DIR/sweep.json`` holds the plan and ``DIR/summary.md`` / ``summary.json``
/ ``report.html`` the results with error bars. Members that share an architecture train together as packs
(``convae.training.packed``); the pack size and the way packs step (batched kernels or members side by side on threads) are measured once and
kept (``DIR/packs-*.json``); ``--pack N`` sets the size.
The same command continues a killed sweep: each pack from the newest checkpoint all its members hold. Under
torchrun each rank takes its share of the members; ``--shard i/n`` runs one slice, for a job array.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig, parse_model_options, settings_fields
from ..data import load_for_config
from ..errors import ConfigError
from ..files import atomic_write_json, atomic_write_text
from ..models.build import check_buildable
from ..runs import RunDir
from ..runtime import Runtime, resolve_device
from ..training import train
from ..training.packed import Pack, choose_pack, measure_pack_sizes, pack_key

FORMAT = "convae-sweep"
VERSION = 1
NOT_ON_A_GRID = {"out", "seed", "quiet", "extra", "resume"}  # the sweep's own, or --seeds


# -- the plan ---------------------------------------------------------------------------------------------------


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["beta=0.5,1,2", "lr=1e-3,2e-3"]`` -> {"beta": [0.5, 1.0, 2.0], "lr": [0.001, 0.002]}, each value read as
    its setting's type (a one-line error naming the item otherwise)."""
    fields = {f.name: f for f in settings_fields()}
    grid: dict[str, list] = {}
    for item in items:
        key, _, values = item.partition("=")
        name = key.strip().lstrip("-").replace("-", "_")
        option = name.partition(".")[2] if name.startswith(OPTION_PREFIX) else None
        if option is not None:  # a model factory's option: model_option.KEY=V1,V2 (values read as --model-option's)
            if not option.isidentifier() or not values:
                raise ConfigError(f"--grid {item}: give model-option.KEY=V1,V2,... with KEY an option of the model")
            if name in grid:
                raise ConfigError(f"--grid {item}: {name} is on the grid twice")
            grid[name] = [parse_model_options([f"{option}={v.strip()}"])[option] for v in values.split(",")]
            if len(set(map(str, grid[name]))) != len(grid[name]):
                raise ConfigError(f"--grid {item}: a value is given twice")
            continue
        if name == "model_options":
            raise ConfigError(f"--grid {item}: a model's options go on the grid one by one, as "
                              "model-option.KEY=V1,V2,...")
        if not values or name not in fields or name in NOT_ON_A_GRID:
            close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.75) if name not in fields else []
            why = ("use --seeds N for seeds" if name == "seed" else
                   f"no setting {name.replace('_', '-')}; did you mean {close[0].replace('_', '-')}?" if close else
                   "give KEY=V1,V2,... with KEY a setting of convae train" if name not in fields or not values else
                   f"--{name.replace('_', '-')} is the sweep's own, not a setting members may differ in")
            raise ConfigError(f"--grid {item}: {why}")
        if name in grid:
            raise ConfigError(f"--grid {item}: {name} is on the grid twice")
        kind = fields[name].type.split("|")[0].strip()
        try:
            grid[name] = [_value(v.strip(), kind) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--grid {item}: {kind} values expected") from None
        if len(set(map(str, grid[name]))) != len(grid[name]):
            raise ConfigError(f"--grid {item}: a value is given twice")
    return grid


OPTION_PREFIX = "model_option."


def with_grid_point(settings: dict, point: dict) -> dict:
    """``settings`` with a grid point's values, a model option's among the model's options."""
    merged = {**settings, **{k: v for k, v in point.items() if not k.startswith(OPTION_PREFIX)}}
    options = {k.removeprefix(OPTION_PREFIX): v for k, v in point.items() if k.startswith(OPTION_PREFIX)}
    if options:
        merged["model_options"] = {**settings.get("model_options", {}), **options}
    return merged


def _value(text: str, kind: str):
    if text.lower() == "none":
        return None
    if kind == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(text)
        return text.lower() in ("true", "1")
    return {"int": int, "float": float, "str": str}[kind](text)


@dataclass
class Member:
    name: str
    setting: dict  # its grid point
    seed: int
    config: TrainConfig


@dataclass
class SweepPlan:
    out: Path
    base: dict            # the settings every member shares
    grid: dict            # setting -> values
    seeds: list[int]
    pack: int | None      # --pack N, or None: measured
    members: list[Member]
    pack_by: str | None = None  # --pack-by batched|threads, or None: measured

    def describe(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "base": self.base, "grid": self.grid, "seeds": self.seeds,
                "pack": self.pack, "members": [{"name": m.name, "setting": m.setting, "seed": m.seed, "run":
                                                 str(Path("runs") / m.name)} for m in self.members]}


def member_name(setting: dict, seed: int) -> str:
    return ",".join([f"{k}={v}" for k, v in setting.items()] + [f"seed={seed}"])


def make_plan(base: dict, grid: dict, seeds: int, out: str | Path, pack: int | None,
              pack_by: str | None = None) -> SweepPlan:
    """Every member's settings, each validated before anything is written: the grid's product, times ``seeds``
    seeds counting up from the base's own (--seed, default 0)."""
    if seeds < 1:
        raise ConfigError(f"--seeds: must be a positive integer, got {seeds}")
    if pack is not None and pack < 1:
        raise ConfigError(f"--pack: must be a positive integer, got {pack}")
    out = Path(out)
    first = base.get("seed", 0)
    members = []
    for point in itertools.product(*grid.values()) if grid else [()]:
        setting = dict(zip(grid, point))
        for seed in range(first, first + seeds):
            name = member_name(setting, seed)
            settings = {**with_grid_point(base, setting), "seed": seed, "out": str(out / "runs" / name), "keep_checkpoints":
                        max(2, base.get("keep_checkpoints", 2)),  # a pack resumes from the step all members hold
                        "extra": {**base.get("extra", {}), "sweep": str(out), "member": name}}
            try:
                config = TrainConfig(**settings).validate()
                if seed == first:  # the model of each setting builds (an option it takes, a value it accepts)
                    check_buildable(config)
                members.append(Member(name, setting, seed, config))
            except ConfigError as e:
                raise ConfigError(f"sweep member {name}: {e}") from None
    return SweepPlan(out, {k: v for k, v in base.items() if k != "out"}, grid, list(range(first, first + seeds)),
                     pack, members, pack_by)


def keep_plan(plan: SweepPlan, argv: list[str] | None) -> None:
    """Write DIR/sweep.json, or check that the one there is this plan (the same command continues a sweep; another
    command is refused rather than mixed into it)."""
    path = plan.out / "sweep.json"
    described = plan.describe()
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
        except ValueError as e:
            raise ConfigError(f"{path}: unreadable ({e})") from None
        mine = {k: described[k] for k in ("base", "grid", "seeds", "members")}
        theirs = {k: kept.get(k) for k in mine}
        if json.loads(json.dumps(mine)) != theirs:
            differ = ", ".join(k for k in mine if json.loads(json.dumps(mine[k])) != theirs[k])
            raise ConfigError(f"--out {plan.out}: holds another sweep (its {differ} differ); give the command that "
                              "started it to continue it, or another --out")
        if plan.pack is None:
            plan.pack = kept.get("pack")
        return
    if plan.out.exists() and any(plan.out.iterdir()):
        raise ConfigError(f"--out {plan.out}: already exists and holds no sweep; give an empty or new folder")
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {**described, "command": argv})


def read_plan(out: str | Path) -> dict:
    path = Path(out) / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"{out}: not a sweep folder (no sweep.json)")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None


# -- running it ---------------------------------------------------------------------------------------------------


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text}: give i/n, e.g. 0/4 (the first of 4 slices)") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text}: i must be 0 .. n-1")
    return i, n


def run_sweep(plan: SweepPlan, *, shard: tuple[int, int] = (0, 1), runtime: Runtime | None = None, log=print,
              resume: str | None = None) -> list:
    """Train this process's share of the members (``shard``, then under torchrun this rank's), pack by pack."""
    runtime = runtime or Runtime()
    mine = plan.members[shard[0]::shard[1]][runtime.rank::runtime.world_size]
    groups: dict[tuple, list[Member]] = {}
    for member in mine:
        groups.setdefault(pack_key(member.config), []).append(member)
    chosen_file = plan.out / f"packs-shard{shard[0]}of{shard[1]}-rank{runtime.rank}of{runtime.world_size}.json"
    chosen = json.loads(chosen_file.read_text()) if chosen_file.is_file() else {}
    outcomes = []
    for g, members in enumerate(groups.values(), 1):
        configs = [m.config for m in members]
        device = resolve_device(configs[0].device, runtime.local_rank)
        data = load_for_config(configs[0], progress=runtime.is_writer and not configs[0].quiet)
        data = data.subset(configs[0].train_limit, configs[0].test_limit).to(device)
        if str(g) not in chosen:  # measured once, kept: a resumed sweep packs its members as before
            rates = measure_pack_sizes(configs, data, device, sizes=[plan.pack] if plan.pack else None,
                                       strategies=(plan.pack_by,) if plan.pack_by else None, log=log)
            strategy, size = choose_pack(rates)
            log(f"{len(configs)} member(s) of model {configs[0].model}: packs of {size}, {strategy} (images/s "
                f"measured: {', '.join(f'{k} {r:.0f}' for k, r in rates.items())})")
            chosen[str(g)] = {"strategy": strategy, "size": size, "measured_img_per_s": rates}
            atomic_write_json(chosen_file, chosen)
        strategy, size = chosen[str(g)]["strategy"], chosen[str(g)]["size"]
        for start in range(0, len(configs), size):
            chunk = configs[start:start + size]
            log(f"pack {start // size + 1} of {math.ceil(len(configs) / size)} ({len(chunk)} member(s), {strategy}: "
                f"{', '.join(Path(c.out).name for c in chunk)})")
            outcomes += train_pack(chunk, data, runtime, strategy, log, resume)
    return outcomes


def train_pack(configs: list[TrainConfig], data, runtime: Runtime, strategy: str, log, resume: str | None) -> list:
    """One pack: from the newest checkpoint all its members hold (members ahead of it go back to it; one that has
    none yet starts over), or a run alone where the pack is of one (the solo trainer, bit for bit)."""
    from ..training.packed import Outcome

    solo_runtime = Runtime(local_rank=runtime.local_rank)  # members are independent: no process group
    if len(configs) == 1 or configs[0].iw_train > 1:
        done = []
        for c in configs:
            train(c, data=data, auto_resume=True, log=lambda line: None, runtime=solo_runtime)
            done.append(Outcome(c.out, "done"))
        return done
    held = [RunDir(c.out).checkpoint_steps() for c in configs]
    common = min((steps[-1] if steps else 0) for steps in held)
    for c, steps in zip(configs, held):
        if steps and common == 0:  # it saved before the others' first checkpoint: it starts over with them
            shutil.rmtree(c.out)
        elif steps and common not in steps:
            raise ConfigError(f"{c.out}: holds no checkpoint of step {common}, the newest the other members of its "
                              f"pack hold (kept: {steps}); start that member over by removing its folder")
    return Pack(configs, data=data, runtime=solo_runtime, strategy=strategy, log=log, at_step=common or None,
                resume=resume).run()


# -- the results -----------------------------------------------------------------------------------------------------


def summarize(out: str | Path) -> dict:
    """One row per setting: mean and standard deviation over its seeds of the final test -ELBO (bits/dim for a
    discrete likelihood), the IW bound and active units where ``convae eval`` wrote them, the training time; and
    which members stopped and why."""
    out = Path(out)
    kept = read_plan(out)
    rows = []
    for setting, members in _by_setting(kept["members"]):
        values: dict[str, list] = {"test": [], "iw": [], "active": [], "seconds": []}
        stopped, done, curves, iw_k, unit, steps = [], 0, [], None, "nats", []
        for member in members:
            run = RunDir(out / member["run"])
            status = run.read_status()
            records = run.metrics() if run.metrics_file.is_file() else []
            if status.get("stopped"):
                stopped.append({"member": member["name"], "why": status["stopped"]})
                continue
            if not records or not _finished(run, records[-1]):
                continue
            bad = next((k for k in ("test_neg_elbo", "train_loss") if not _finite(records[-1].get(k))), None)
            if bad is not None:  # a figure no summary may average (a run folder written before convae refused it)
                stopped.append({"member": member["name"], "why": f"its {bad} at step {records[-1]['step']} is "
                                                                 f"{records[-1].get(bad)}: left out of the summary"})
                continue
            # whole epochs, and the last record, which a run bounded by --max-steps takes part-way through one
            metrics = [m for m in records[:-1] if not m.get("partial_epoch")] + records[-1:]
            done += 1
            last = metrics[-1]
            steps.append(last["step"])
            unit = "bits/dim" if "test_bits_per_dim" in last else "nats"
            values["test"].append(last.get("test_bits_per_dim", last["test_neg_elbo"]))
            values["seconds"].append(last["train_seconds"])
            curves.append([(m["epoch"], m.get("test_bits_per_dim", m["test_neg_elbo"])) for m in metrics])
            evaluation = run.read_eval("eval.json") or {}
            if "iw_nll" in evaluation and _finite(evaluation["iw_nll"]):
                iw_k = evaluation["iw_samples"]
                values["iw"].append(evaluation.get("iw_bits_per_dim", evaluation["iw_nll"]))
            if evaluation.get("active_units") is not None:
                values["active"].append(evaluation["active_units"])
        rows.append({"setting": setting, "members": len(members), "done": done, "unit": unit, "iw_samples": iw_k,
                     "steps": sorted(set(steps)),  # where the figures were taken (the members' last steps)
                     **{k: _mean_std(v) for k, v in values.items()}, "stopped": stopped, "curves": curves})
    return {"sweep": str(out), "grid": kept["grid"], "seeds": kept["seeds"], "rows": rows}


def _by_setting(members: list[dict]):
    """(setting, its members) in the plan's order, the setting's keys in the grid's order."""
    order: dict[str, list] = {}
    for m in members:
        order.setdefault(json.dumps(m["setting"], sort_keys=True), []).append(m)
    return [(v[0]["setting"], v) for v in order.values()]


def _finished(run: RunDir, last: dict) -> bool:
    """Whether ``last`` is the record of the run's last step: its epochs', or its --max-steps' if that is fewer.
    Read from config.json as written (the summary needs no model code, a plug-in's included)."""
    settings = run.read_settings()
    config, steps = settings["config"], settings.get("steps_per_epoch", 1)
    planned = config["epochs"] * steps
    return last["step"] >= min(planned, config.get("max_steps") or planned)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _mean_std(values: list[float]) -> dict | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


def format_summary(summary: dict) -> str:
    """The summary as a Markdown table (mean ± std over seeds; n: the seeds that finished)."""
    def cell(stat, digits=2):
        return "–" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"

    rows = summary["rows"]
    unit = rows[0]["unit"] if rows else "nats"
    k = next((r["iw_samples"] for r in rows if r["iw_samples"]), None)
    header = ["setting", "seeds done", "at step", f"test −ELBO ({unit})", f"IW bound (K = {k})" if k else "IW bound",
              "active units", "training s", "stopped"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        setting = ", ".join(f"{key} = {v}" for key, v in r["setting"].items()) or "(base)"
        digits = 4 if r["unit"] == "bits/dim" else 2
        at = ", ".join(map(str, r.get("steps") or [])) or "–"
        lines.append("| " + " | ".join([setting, f"{r['done']} of {r['members']}", at, cell(r["test"], digits),
                                        cell(r["iw"], digits), cell(r["active"], 1), cell(r["seconds"], 0),
                                        ", ".join(s["member"] for s in r["stopped"]) or "–"]) + " |")
    notes = [f"- {s['member']}: {s['why']}" for r in rows for s in r["stopped"]]
    return "\n".join(lines + ([""] + ["Stopped:"] + notes if notes else []))


def write_summary(out: str | Path) -> dict:
    """DIR/summary.json, DIR/summary.md and DIR/report.html, from the member folders as they are now."""
    from ..reporting.html import write_sweep_report

    summary = summarize(out)
    out = Path(out)
    atomic_write_json(out / "summary.json", {**summary, "rows": [{k: v for k, v in r.items() if k != "curves"}
                                                                 for r in summary["rows"]]})
    atomic_write_text(out / "summary.md", format_summary(summary) + "\n")
    write_sweep_report(summary, out / "report.html")
    return summary


def evaluate_members(out: str | Path, iw_samples: int, log=print, device: str = "auto",
                     only: list[str] | None = None) -> int:
    """``convae eval`` (numbers only) of every finished member (of those named ``only``) that has none yet (or
    none with this K)."""
    from ..evaluation.evaluate import evaluate_run
    from ..runs import open_run

    kept, count = read_plan(out), 0
    for member in kept["members"]:
        if only is not None and member["name"] not in only:
            continue
        run = RunDir(Path(out) / member["run"])
        metrics = run.metrics() if run.metrics_file.is_file() else []
        if run.read_status().get("stopped") or not metrics or not _finished(run, metrics[-1]):
            continue
        evaluation = run.read_eval("eval.json") or {}
        if evaluation and (not iw_samples or evaluation.get("iw_samples") == iw_samples):
            continue
        log(f"evaluating {member['name']}" + (f" (IW bound, K = {iw_samples})" if iw_samples else ""))
        evaluate_run(open_run(run.path, device), iw_samples=iw_samples, pictures=False)
        count += 1
    return count


__all__ = ["SweepPlan", "evaluate_members", "format_summary", "keep_plan", "make_plan", "parse_grid",
           "parse_shard", "run_sweep", "summarize", "write_summary"]
