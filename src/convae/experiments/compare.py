"""``convae compare``: several models under one budget, one table and one panel of pictures."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..benchmarking.flops import forward_flops_per_image
from ..config import TrainConfig
from ..data import load_for_config
from ..errors import ConfigError
from ..evaluation.artifacts import artifact_scores
from ..evaluation.evaluate import evaluate_run
from ..files import atomic_write_json, atomic_write_text
from ..models import build_run_model
from ..models.registry import model_names
from ..runs import RunDir, open_run
from ..training import train
from ..visualisation import rows_grid


@torch.no_grad()
def _panel_column(run) -> torch.Tensor:
    """Six samples from the prior, then four test reconstructions."""
    p = next(run.model.parameters())
    generator = torch.Generator(device=p.device).manual_seed(0)
    test_set = run.test_set(run.data())
    x = test_set.floats(0, 4, p.dtype, p.device)
    recon = run.model.reconstruct(x, generator, labels=test_set.labels_of(0, 4, p.device))
    return torch.cat([run.model.sample(6, generator=generator), recon]).cpu()


def compare(models: list[str], settings: dict, out: Path, *, runs: list[str] | None = None, iw_samples: int = 100,
            device: str = "auto") -> dict:
    """Train each of ``models`` with the same ``settings`` (a TrainConfig's, but the model and folder) in
    ``out/MODEL`` (a folder that holds a run already is reused), or take the finished ``runs``; then evaluate each
    and write the table and the panel into ``out``."""
    if runs:
        run_dirs = [Path(r) for r in runs]
    else:
        run_dirs = [Path(config.out) for config in train_each(models, settings, out)]
    opened = [open_run(d, device) for d in run_dirs]  # refuses missing folders and foreign checkpoints first
    return tabulate(opened, out, iw_samples)


def train_each(models: list[str], settings: dict, out: Path) -> list[TrainConfig]:
    """Every model's settings checked (and refused) before the first one trains; then each trained in turn."""
    unknown = [name for name in models if name not in model_names()]
    if unknown:
        raise ConfigError(f"--models: unknown model {unknown[0]!r} (choose from {', '.join(model_names())})")
    configs = [TrainConfig(**{**settings, "model": name, "out": str(out / name), "quiet": True}).validate()
               for name in models]
    channels = load_for_config(configs[0]).shape[0]
    for config in configs:  # a model that cannot take these images is refused before any training
        build_run_model(config, channels)
    for k, config in enumerate(configs, 1):
        if not RunDir(config.out).config_file.exists():
            print(f"compare: training {config.model} ({k}/{len(configs)}, {config.epochs} epoch(s)) in "
                  f"{config.out} ...", file=sys.stderr, flush=True)
            train(config, log=lambda line: None)
        else:
            print(f"compare: reusing {config.out} ({k}/{len(configs)})", file=sys.stderr, flush=True)
    return configs


def tabulate(runs: list, out: Path, iw_samples: int) -> dict:
    """Each run evaluated (test -ELBO, IW bound with ``iw_samples``, dots); the table and the panel in ``out``."""
    rows, panel = [], []
    for run in runs:
        ev = evaluate_run(run, iw_samples=iw_samples, pictures=False)
        art = artifact_scores(run, n=2000, picture=False)
        ends = [m for m in run.metrics if not m.get("partial_epoch")]
        steps_per_epoch = run.settings.get("steps_per_epoch") or 1
        rows.append({
            "model": run.config.model, "run": str(run.path), "epochs": round(run.step / steps_per_epoch, 2),
            "steps": run.step, "batch_size": run.config.batch_size,
            "test_neg_elbo": ev["test_neg_elbo"], "iw_nll": ev.get("iw_nll"), "iw_samples": iw_samples,
            "entropy_floor": ev["entropy_floor"],
            "dots_samples": art["samples"]["score"], "dots_samples_of_mean": art["samples"]["score_of_mean"],
            "dots_reconstructions": art["reconstructions"]["score"],
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "mflops_per_image": forward_flops_per_image(run.model) / 1e6,
            "seconds_per_epoch": (ends[-1]["train_seconds"] / len(ends)) if ends else None,
        })
        panel.append(_panel_column(run))

    out.mkdir(parents=True, exist_ok=True)
    columns = torch.stack(panel, dim=1)  # images x models
    rows_grid(list(columns), out / "panel.png", labels=[f"sample {i + 1}" for i in range(6)] +
              [f"recon. {i + 1}" for i in range(4)], title="  |  ".join(r["model"] for r in rows))
    table = format_table(rows)
    atomic_write_text(out / "compare.md", table + "\n")
    atomic_write_json(out / "compare.json", rows)
    return {"rows": rows, "table": table}


def format_table(rows: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    k = rows[0]["iw_samples"] if rows else 0
    iw = [f"IW bound (K={k})"] if k else []  # no column for a bound that was not computed
    header = ["model (run)", "epochs", "test -ELBO", *iw, "dots, samples", "dots, samples (mean)", "dots, recon.",
              "params", "MFLOP/img", "s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{r['model']} ({Path(r['run']).name})", f"{r['epochs']:g}", f(r["test_neg_elbo"], ".2f"),
                 *([f(r["iw_nll"], ".2f")] if k else []), f(r["dots_samples"], ".2f"),
                 f(r["dots_samples_of_mean"], ".2f"), f(r["dots_reconstructions"], ".2f"), f"{r['parameters']:,}",
                 f(r["mflops_per_image"], ".1f"), f(r["seconds_per_epoch"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        floor = rows[0]["entropy_floor"]
        lines.append("\nnats per image on the test set" + (f"; entropy floor {floor:.2f}" if floor is not None else "")
                     + ". dots = checkerboard score (1.0 = like the data).")
        budgets = {(r["steps"], r["batch_size"]) for r in rows}
        if len(budgets) > 1:
            lines.append("Note: these runs had different budgets (" + "; ".join(
                f"{Path(r['run']).name}: {r['steps']} steps of {r['batch_size']}" for r in rows)
                + "), so the table does not compare like with like.")
    return "\n".join(lines)
