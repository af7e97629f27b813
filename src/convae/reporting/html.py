"""``convae report``: one self-contained HTML page of one or more runs, built from their run folders alone.

Everything is inline (pictures as data URIs, curves as SVG drawn by matplotlib, a few lines of script for the
epoch slider), so the page opens from a file with no network. Read: ``config.json`` (settings, environment),
``metrics.jsonl`` (epochs), ``steps.jsonl`` (the training loss every few steps), ``images/result*.png`` (the seed's
per-epoch pictures), ``eval/`` (what ``convae eval`` and ``convae artifacts`` wrote). What is missing is named,
with the command that adds it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..version import __version__  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..files import atomic_write_text, read_jsonl  # noqa: E402
from ..runs import RunDir  # noqa: E402

COLOURS = plt.get_cmap("tab10").colors  # one colour per run, the same in every plot
EVAL_PICTURES = [("samples.png", "Samples from the prior"),
                 ("samples_by_class.png", "Samples of each class (conditional model)"),
                 ("reconstructions.png", "Test reconstructions"),
                 ("interpolations.png", "Interpolations between test images"),
                 ("traversals.png", "Latent traversals (most active dimensions)"),
                 ("latent_pca.png", "Latent space: PCA of test-set means, by label"),
                 ("artifacts.png", "Checkerboard artifacts: mean sample and spectra")]
SETTINGS = ["model", "encoder", "likelihood", "epochs", "max_steps", "batch_size", "lr", "lr_schedule", "seed", "dtype",
            "precision", "binarize", "data", "data_dir", "image_size", "channels", "resize", "background",
            "train_limit", "test_limit"]


@dataclass
class RunFiles:
    """What one run folder holds, read once."""

    path: Path
    settings: dict
    metrics: list[dict]
    steps: list[dict]
    epoch_pictures: list[tuple[str, Path]]
    evaluation: dict | None
    artifacts: dict | None

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    @classmethod
    def read(cls, path: str | Path) -> "RunFiles":
        run = RunDir(path)
        if not run.config_file.is_file():  # a report is of run folders only: a missing one is not a run either
            raise ConfigError(f"{run.path}: not a convae run folder (no config.json)")
        settings = run.read_settings()
        pictures = []
        for picture in run.images.glob("result*.png"):
            match = re.fullmatch(r"result(\d+)(?:-step(\d+))?\.png", picture.name)
            if match:
                pictures.append((int(match[1]), int(match[2] or 0), picture))
        pictures.sort()
        label = lambda e, s: f"epoch {e}" + (f", step {s}" if s else "")  # noqa: E731
        return cls(run.path, settings, _read_records(run.metrics_file), _read_records(run.steps_file),
                   [(label(e, s), p) for e, s, p in pictures], run.read_eval("eval.json"), run.read_eval("artifacts.json"))


def _read_records(path: Path) -> list[dict]:
    """A JSON-lines file, tolerating a last line cut short by a crash (the report is built while training runs)."""
    try:
        return read_jsonl(path)
    except json.JSONDecodeError:
        lines = path.read_text().splitlines()
        return [json.loads(line) for line in lines[:-1] if line.strip()]


# ----------------------------------------------------------------------------------------------------------
# Pieces of the page


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buffer.getvalue()
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)  # matplotlib's RDF block: dates, namespaces
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline SVG inside HTML


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _curves(runs: list[RunFiles]) -> list[tuple[str, str]]:
    """(title, svg) for each plot; runs overlaid, one colour each."""
    plots = []
    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.fonttype": "none"})  # text as text: smaller, selectable, readable by a test

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for k, run in enumerate(runs):
        colour = COLOURS[k % len(COLOURS)]
        records, key = (run.steps, "loss") if run.steps else (run.metrics, "train_loss")
        if records:
            said = run.name if run.steps else f"{run.name} (per epoch)"
            ax.plot([r["step"] for r in records], [r[key] for r in records], "-" if run.steps else "o-",
                    color=colour, lw=1.2, label=said)
        if run.steps and run.metrics and len(run.steps) < 10:  # a short run: its epochs' means too, as markers
            ax.plot([m["step"] for m in run.metrics], [m["train_loss"] for m in run.metrics], "o", color=colour,
                    ms=4, label=f"{run.name} (epoch means)")
        own = [r for r in records if r.get("train_objective") is not None]
        if own:  # what a model's own objective minimised, beside (never instead of) its -ELBO
            ax.plot([r["step"] for r in own], [r["train_objective"] for r in own], ":", color=colour, lw=1.2,
                    label=f"{run.name}: its training objective")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (−ELBO), nats / image")
    ax.grid(alpha=0.3)
    _finish(ax, runs)
    owners = [run for run in runs if any(r.get("train_objective") is not None for r in run.steps or run.metrics)]
    plots.append(("Training loss" + (" (dotted: the model's own training objective, which training minimised; "
                                     "the solid −ELBO is what every figure reports)" if owners else ""), _svg(fig)))

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    floors = []
    for k, run in enumerate(runs):
        colour = COLOURS[k % len(COLOURS)]
        if run.metrics:
            steps = [m["step"] / run.settings.get("steps_per_epoch", 1) for m in run.metrics]
            ax.plot(steps, [m["test_neg_elbo"] for m in run.metrics], "o-", color=colour, lw=1.4, ms=3, label=run.name)
            floor = run.metrics[-1].get("entropy_floor")
            if floor:
                floors.append(floor)
                ax.axhline(floor, color=colour, ls="--", lw=1, label=f"{run.name}: entropy floor {floor:.1f}")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test −ELBO, nats / image")
    ax.grid(alpha=0.3)
    _finish(ax, runs)
    bits = [run for run in runs if run.metrics and "test_bits_per_dim" in run.metrics[-1]]
    caption = "Test −ELBO per epoch" + (" (dashed: the entropy floor, the least any Bernoulli decoder can reach on "
                                        "these targets)" if floors else "")
    if bits:
        caption += "; in bits per dimension: " + ", ".join(
            f"{run.name} {run.metrics[-1]['test_bits_per_dim']:.4f} at the last epoch" for run in bits)
    plots.append((caption, _svg(fig)))

    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.0))
    for k, run in enumerate(runs):
        colour = COLOURS[k % len(COLOURS)]
        epochs = [m["step"] / run.settings.get("steps_per_epoch", 1) for m in run.metrics]
        axes[0].plot(epochs, [m["test_L_likelihood"] for m in run.metrics], "o-", color=colour, ms=3, label=run.name)
        axes[1].plot(epochs, [m["test_L_KL"] for m in run.metrics], "o-", color=colour, ms=3, label=run.name)
    for ax, what in zip(axes, ("reconstruction term L_likelihood", "KL term L_KL")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{what},\nnats / image", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.append(("The two terms of the test −ELBO", _svg(fig)))

    last = [(run, run.metrics[-1]["test_kl_per_dim"]) for run in runs
            if run.metrics and run.metrics[-1].get("test_kl_per_dim")]
    if last:
        fig, ax = plt.subplots(figsize=(6.4, 2.6))
        width = 0.8 / len(last)
        for k, (run, kl) in enumerate(last):
            order = sorted(kl, reverse=True)
            ax.bar([d + k * width for d in range(len(order))], order, width=width, color=COLOURS[k % len(COLOURS)],
                   label=f"{run.name} (epoch {run.metrics[-1]['epoch']})")
        ax.axhline(0.01, color="0.5", lw=0.8, ls="--")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # dimensions are counted, not measured
        ax.set_xlabel("latent dimensions, sorted by KL")
        ax.set_ylabel("test KL, nats", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, frameon=False)
        fig.tight_layout()
        plots.append(("KL per latent dimension on the test set at the last epoch (dimensions near 0 are unused: "
                      "posterior collapse)", _svg(fig)))
    return plots


def _finish(ax, runs: list[RunFiles]) -> None:
    if any(line.get_label()[:1] != "_" for line in ax.get_lines()):
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no records yet", transform=ax.transAxes, ha="center", va="center", color="0.5")


def _settings_table(runs: list[RunFiles]) -> str:
    def value(run: RunFiles, key: str) -> str:
        config, env = run.settings["config"], run.settings.get("environment", {})
        dist = run.settings.get("distributed", {})
        sources = {"parameters": f"{run.settings.get('model_parameters', 0):,}",
                   "device": f"{env.get('device', '?')} ({env.get('device_name', '?')})",
                   "torch": env.get("torch"), "convae": env.get("convae"), "python": env.get("python"),
                   "processes": dist.get("world_size", 1), "precision (effective)": run.settings.get("precision"),
                   "preset": (config.get("extra") or {}).get("preset"),
                   "resize (effective)": (run.settings.get("data") or {}).get("resize_mode")}
        if key == "data summary":  # what the data is and what preparing it did, as the run said it
            lines = (run.settings.get("data") or {}).get("summary") or []
            return "<br>".join(html.escape(line) for line in lines) or "–"
        v = sources[key] if key in sources else config.get(key)
        return "–" if v is None else html.escape(str(v))

    keys = SETTINGS + ["resize (effective)", "data summary", "preset", "parameters", "precision (effective)", "device",
                       "processes", "torch", "python", "convae"]
    head = "".join(f"<th style='color:{_hex(k)}'>{html.escape(r.name)}</th>" for k, r in enumerate(runs))
    rows = "".join(f"<tr><td>{html.escape(key)}</td>" + "".join(f"<td>{value(r, key)}</td>" for r in runs) + "</tr>"
                   for key in keys)
    return f"<table><thead><tr><th>setting</th>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _results_table(runs: list[RunFiles]) -> str:
    """One row per run. What each bound is of is said in its own cell: a conditional run's bounds are on
    −log p(x | label), not comparable with an unconditional run's −log p(x); a discrete likelihood's figures come
    with bits per dimension too."""
    rows = []
    for k, run in enumerate(runs):
        last = run.metrics[-1] if run.metrics else {}
        ev, art = run.evaluation or {}, run.artifacts or {}
        conditional = bool(run.settings["config"].get("conditional"))
        fmt = lambda v, d=2: "–" if v is None else f"{v:.{d}f}"  # noqa: E731

        def with_bits(nats, bits):
            return fmt(nats) + ("" if bits is None else f" ({bits:.4f} bits/dim)")

        iw = "–"
        if "iw_nll" in ev:
            iw = (f"{with_bits(ev['iw_nll'], ev.get('iw_bits_per_dim'))} ± {ev['iw_nll_std_error']:.2f} "
                  f"(K = {ev['iw_samples']}) on −log p(x{' | label' if conditional else ''})")
        name = html.escape(run.name) + (" <span class='note'>(conditional: bounds on p(x | label))</span>"
                                        if conditional else "")
        rows.append(
            f"<tr><td style='color:{_hex(k)}'>{name}</td><td>{last.get('epoch', '–')}</td>"
            f"<td>{last.get('step', '–')}</td><td>{with_bits(last.get('test_neg_elbo'), last.get('test_bits_per_dim'))}"
            f"</td><td>{fmt(last.get('entropy_floor'))}</td>"
            f"<td>{with_bits(ev.get('test_neg_elbo'), ev.get('test_bits_per_dim'))}</td><td>{html.escape(iw)}</td>"
            f"<td>{fmt((art.get('samples') or {}).get('score'))}</td>"
            f"<td>{fmt((art.get('samples') or {}).get('score_of_mean'))}</td>"
            f"<td>{fmt(last.get('train_seconds'), 0)}</td></tr>")
    return (_differences(runs) + "<table><thead><tr><th>run</th><th>epoch</th><th>step</th>"
            "<th>test −ELBO (last epoch)</th><th>entropy floor</th><th>test −ELBO (convae eval)</th>"
            "<th>IW bound</th><th>dots score, samples</th><th>dots score, mean sample</th><th>training seconds</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table><p class='note'>nats per image; dots scores: 1.0 = "
            "like the data.</p>")


def _differences(runs: list[RunFiles]) -> str:
    """For several runs, the settings in which they differ (what the table's figures should be read against)."""
    if len(runs) < 2:
        return ""
    def described(run: RunFiles) -> dict:
        config, data = run.settings["config"], run.settings.get("data", {})
        return {**{key.replace("_", " "): config.get(key) for key in SETTINGS + ["conditional", "beta", "model_options"]},
                "training images": data.get("train_images"), "test images": data.get("test_images")}

    table = [described(run) for run in runs]
    differ = [key for key in table[0] if len({json.dumps(t.get(key), sort_keys=True, default=str) for t in table}) > 1]
    if not differ:
        return "<p class='note'>The runs share every setting listed below but their results.</p>"
    items = "; ".join(f"<b>{html.escape(key)}</b> " + ", ".join(html.escape(str(t.get(key))) for t in table)
                      for key in differ)
    return f"<p class='differ'>These runs differ in: {items}.</p>"


def _samples(run: RunFiles) -> str:
    """The prior samples training drew at its last report refresh (RUN/images/samples.png), where there are any."""
    path = run.path / "images" / "samples.png"
    if not path.is_file():
        return ""
    return (f"<h3>Samples from the prior</h3><figure><img class='wide' alt='samples from the prior' src='{_png(path)}'>"
            "<figcaption>64 samples (z from the prior, the same draws each time), as training left the model"
            "</figcaption></figure>")


# per run: every epoch's picture made a 60-epoch 64 x 64 colour run's page 16 MB; 12 make it 3.7 MB
MAX_EPOCH_PICTURES = 12


def _epoch_slider(run: RunFiles, index: int) -> str:
    if not run.epoch_pictures:
        return "<p class='missing'>No per-epoch pictures yet (they appear after the first epoch).</p>"
    shown = _spread(run.epoch_pictures, MAX_EPOCH_PICTURES)
    sources = [_png(p) for _, p in shown]
    labels = [label for label, _ in shown]
    note = ("" if len(shown) == len(run.epoch_pictures) else
            f" <span class='note'>({len(shown)} of {len(run.epoch_pictures)} epochs on this page, evenly spread; every "
            f"one is in {html.escape(str(run.path / 'images'))})</span>")
    last = len(sources) - 1
    return (f"<figure><img id='grid{index}' class='grid' alt='reconstructions, {html.escape(labels[last])}' "
            f"src='{sources[last]}'><figcaption><label>Inputs and reconstructions after "
            f"<span id='label{index}'>{html.escape(labels[last])}</span> "
            f"<input type='range' id='slider{index}' min='0' max='{last}' value='{last}' "
            f"aria-label='epoch'></label>{note}</figcaption></figure>"
            f"<script>epochSlider({index}, {json.dumps(sources)}, {json.dumps(labels)});</script>")


def _spread(items: list, most: int) -> list:
    """At most ``most`` of ``items``, evenly spread, the first and the last always among them."""
    if len(items) <= most:
        return list(items)
    picks = sorted({round(k * (len(items) - 1) / (most - 1)) for k in range(most)})
    return [items[k] for k in picks]


def _evaluation_section(run: RunFiles) -> str:
    parts = []
    for file, caption in EVAL_PICTURES:
        path = run.path / "eval" / file
        if path.is_file():
            parts.append(f"<figure><img class='wide' alt='{html.escape(caption)}' src='{_png(path)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    missing = []
    if run.evaluation is None:
        missing.append(f"<code>convae eval {html.escape(str(run.path))} --iw-samples 1000</code> (test −ELBO, "
                       "importance-weighted bound, samples, interpolations, traversals, latent map)")
    if run.artifacts is None:
        missing.append(f"<code>convae artifacts {html.escape(str(run.path))}</code> (checkerboard scores and spectra)")
    if missing:
        parts.append("<p class='missing'>Not evaluated yet. Add it with " + "; and ".join(missing)
                     + ", or build this page with <code>convae report --eval</code>.</p>")
    if run.evaluation:
        parts.append(f"<p class='note'>Protocol: {html.escape(run.evaluation.get('protocol', ''))}</p>")
        groups = run.evaluation.get("groups")
        if groups:  # a hierarchy: each group of latents against its own prior
            rows = "".join(f"<tr><td>{html.escape(g['group'])}</td><td>{g['active_units']} of {g['units']}</td>"
                           f"<td>{g['kl']:.2f}</td></tr>" for g in groups)
            parts.append("<table class='groups'><caption>Latent groups, top down</caption><tr><th>group</th>"
                         f"<th>active units</th><th>KL (nats)</th></tr>{rows}</table>")
    return "".join(parts)


def _hex(k: int) -> str:
    r, g, b = COLOURS[k % len(COLOURS)][:3]
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


STYLE = """
body{font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1b1b1b;margin:0 auto;
max-width:960px;padding:1rem 1.25rem 3rem}
h1{font-size:1.6rem;margin:.5rem 0 0}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem}.meta,.note{color:#555;font-size:.9rem}.differ{background:#eef4ff;padding:.5rem .75rem;
border-left:3px solid #4a7bd0}.missing{background:#fff7e0;padding:.5rem .75rem;
border-left:3px solid #e0a800}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0;display:block;
overflow-x:auto}th,td{padding:.25rem .45rem;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
th{white-space:normal;vertical-align:bottom;min-width:3.5rem}
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#444}svg{max-width:100%;height:auto}
img.grid,img.wide{max-width:100%;height:auto;image-rendering:pixelated;display:block}input[type=range]{width:min(
360px,80vw);vertical-align:middle}code{background:#f4f4f4;padding:0 .25rem;border-radius:3px;font-size:.85rem;
word-break:break-all}
"""

SCRIPT = """
function epochSlider(i, sources, labels) {
  var slider = document.getElementById('slider' + i), grid = document.getElementById('grid' + i),
      label = document.getElementById('label' + i);
  slider.addEventListener('input', function () {
    grid.src = sources[slider.value]; grid.alt = 'reconstructions, ' + labels[slider.value];
    label.textContent = labels[slider.value];
  });
}
"""


def build_report(run_dirs: list[str | Path]) -> str:
    runs = [RunFiles.read(d) for d in run_dirs]
    title = ("convae run " + runs[0].name) if len(runs) == 1 else f"convae: {len(runs)} runs compared"
    body = [f"<h1>{html.escape(title)}</h1><p class='meta'>Generated {datetime.now():%Y-%m-%d %H:%M} by convae "
            f"{__version__} from {', '.join(html.escape(str(r.path)) for r in runs)}.</p>",
            "<h2>Results</h2>", _results_table(runs), "<h2>Curves</h2>"]
    body += [f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>" for caption, svg in _curves(runs)]
    for k, run in enumerate(runs):
        body.append(f"<h2 style='color:{_hex(k)}'>{html.escape(run.name)}</h2><h3>Reconstructions by epoch</h3>")
        body.append(_epoch_slider(run, k))
        body.append(_samples(run))
        body.append("<h3>Evaluation</h3>" + _evaluation_section(run))
    body += ["<h2>Settings and environment</h2>", _settings_table(runs)]
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(body)}</body></html>")


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    out = Path(out)
    atomic_write_text(out, build_report(run_dirs))
    return out


# ----------------------------------------------------------------------------------------------------------
# A sweep's page


def _sweep_curves(summary: dict) -> str:
    """Test -ELBO per epoch, one colour per setting: the mean over its seeds, a band of one standard deviation."""
    import numpy as np

    plt.rcParams.update({"font.size": 10, "axes.spines.top": False, "axes.spines.right": False})
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for k, row in enumerate(summary["rows"]):
        curves = row["curves"]
        if not curves:
            continue
        epochs = sorted({e for curve in curves for e, _ in curve})
        table = np.array([[dict(curve).get(e, np.nan) for e in epochs] for curve in curves], dtype=float)
        mean, std = np.nanmean(table, 0), np.nanstd(table, 0)
        label = ", ".join(f"{key} = {v}" for key, v in row["setting"].items()) or "base"
        colour = COLOURS[k % len(COLOURS)]
        ax.plot(epochs, mean, "o-", color=colour, ms=3, lw=1.4, label=f"{label} ({len(curves)} seeds)")
        ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    unit = summary["rows"][0]["unit"] if summary["rows"] else "nats"
    ax.set_ylabel(f"test −ELBO, {'bits / dim' if unit == 'bits/dim' else 'nats / image'}")
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no finished members yet", transform=ax.transAxes, ha="center", va="center", color="0.5")
    return _svg(fig)


def write_sweep_report(summary: dict, out: str | Path) -> Path:
    """One self-contained page of a sweep: the table (mean ± std over seeds per setting) and the curves."""
    def cell(stat, digits=2):
        return "–" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"

    rows = []
    for r in summary["rows"]:
        setting = ", ".join(f"{k} = {v}" for k, v in r["setting"].items()) or "(base)"
        digits = 4 if r["unit"] == "bits/dim" else 2
        stopped = "; ".join(f"{s['member']}: {s['why']}" for s in r["stopped"]) or "–"
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            setting, f"{r['done']} of {r['members']}", cell(r["test"], digits), cell(r["iw"], digits),
            cell(r["active"], 1), cell(r["seconds"], 0), stopped)) + "</tr>")
    unit = summary["rows"][0]["unit"] if summary["rows"] else "nats"
    k = next((r["iw_samples"] for r in summary["rows"] if r["iw_samples"]), None)
    head = "".join(f"<th>{h}</th>" for h in ("setting", "seeds done", f"test −ELBO ({unit})",
                                             f"IW bound (K = {k})" if k else "IW bound", "active units",
                                             "training seconds", "stopped"))
    title = f"convae sweep {Path(summary['sweep']).name}"
    body = (f"<h1>{html.escape(title)}</h1><p class='meta'>Generated {datetime.now():%Y-%m-%d %H:%M} by convae "
            f"{__version__} from {html.escape(summary['sweep'])}: seeds {summary['seeds']}, grid "
            f"{html.escape(json.dumps(summary['grid']))}.</p><h2>Results</h2><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table><p class='note'>Mean ± standard deviation over the seeds that "
            "finished; each member is a run folder under runs/ with its own report.</p><h2>Curves</h2>"
            f"<figure>{_sweep_curves(summary)}<figcaption>Test −ELBO per epoch: the mean over seeds, and one standard "
            "deviation around it</figcaption></figure>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
    out = Path(out)
    atomic_write_text(out, page)
    return out


# ----------------------------------------------------------------------------------------------------------
# A search's page


def write_tune_report(summary: dict, figures: list[tuple[str, object]], out: str | Path) -> Path:
    """One self-contained page of a search (``convae tune``): the best trial, the top trials, and ``figures``
    ((caption, matplotlib figure): the optimisation history, the parallel coordinates, the importances)."""
    best = summary["best"]
    keys = list(best["params"]) if best else []
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
        row["trial"], f"{row['value']:.2f}", *(fmt(row["params"].get(k)) for k in keys), row["run"])) + "</tr>"
        for row in summary["top"])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("trial", "value", *keys, "run folder"))
    said = (f"best: trial {best['trial']}, {best['value']:.2f}, "
            + ", ".join(f"{k} = {fmt(v)}" for k, v in best["params"].items()) if best else "no complete trial yet")
    importances = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f}</td></tr>"
                          for k, v in summary["importances"].items())
    title = f"convae tune {Path(out).parent.name}"
    body = (f"<h1>{html.escape(title)}</h1><p class='meta'>Generated {datetime.now():%Y-%m-%d %H:%M} by convae "
            f"{__version__} from {html.escape(summary['study'])}: {summary['trials']} trial(s), {summary['complete']} "
            f"complete, {summary['pruned']} pruned, {len(summary['failed'])} failed.</p>"
            f"<h2>Results</h2><p>{html.escape(said)}</p><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
            "</table>" + ("<table class='importances'><thead><tr><th>setting</th><th>importance (Optuna's "
                          f"default evaluator, over the complete trials)</th></tr></thead><tbody>{importances}"
                          "</tbody></table>" if importances else "")
            + "<h2>The search</h2>"
            + "".join(f"<figure>{_svg(fig)}<figcaption>{html.escape(caption)}</figcaption></figure>"
                      for caption, fig in figures))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
    atomic_write_text(Path(out), page)
    return Path(out)
