"""TensorBoard event files, steps.jsonl, and the HTML report — the report opened in a real browser (headless
Chromium, driven by Playwright), skipped with the reason where either is missing."""

import json
import re
import shutil
from pathlib import Path

import pytest

from convae.cli import main
from convae.config import TrainConfig
from convae.training import train
from convae.runs.checkpoint import list_checkpoints

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def tiny(out, **kw) -> TrainConfig:
    settings = dict(epochs=3, batch_size=32, quiet=True, device="cpu", out=str(out), eval_batch_size=64,
                    progress_every=2)
    settings.update(kw)
    return TrainConfig(**settings)


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0,
                                                                  "histograms": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.layouts  # bit for bit within one layout: checked under each by scripts/test-layouts.sh
def test_steps_and_tensorboard_continue_a_resumed_run_without_gaps_or_repeats(tmp_path, tiny_data):
    quiet = lambda s: None  # noqa: E731
    run = tmp_path / "run"
    train(tiny(run, checkpoint_every=4, keep_checkpoints=10, max_steps=14), data=tiny_data, log=quiet)
    newest = list_checkpoints(run / "checkpoints")[-1]  # step 14: drop it, as if killed before it was written
    newest.unlink()
    newest.with_suffix(".safetensors").unlink()
    train(tiny(run), data=tiny_data, resume=True, log=quiet)

    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(2, 25, 2))
    assert all(abs(r["loss"] - r["L_likelihood"] - r["L_KL"]) < 1e-3 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"] and all(r["img_per_s"] > 0 and r["lr"] == 1e-3 for r in steps)

    tb = events(run)
    assert [e.step for e in tb.Scalars("train/loss")] == list(range(2, 25, 2))
    assert [e.value for e in tb.Scalars("train/loss")] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for tag in ("test/neg_elbo", "test/entropy_floor", "test/L_KL", "test/L_likelihood", "monitor/L_tot"):
        assert [e.step for e in tb.Scalars(tag)] == [m["step"] for m in metrics], tag
    assert [e.value for e in tb.Scalars("test/neg_elbo")] == pytest.approx([m["test_neg_elbo"] for m in metrics])
    images = tb.Tags()["images"]
    assert {"reconstructions", "samples"} <= set(images)
    assert [e.step for e in tb.Histograms("test/kl_per_dim")] == [m["step"] for m in metrics]
    for m in metrics:  # per-dimension KL in metrics.jsonl: one value per latent dimension, summing to L_KL
        assert len(m["test_kl_per_dim"]) == 100 and sum(m["test_kl_per_dim"]) == pytest.approx(m["test_L_KL"], rel=1e-5)
    assert [e.step for e in tb.Images("samples")] == [m["step"] for m in metrics]
    assert tb.Images("samples")[0].width > 8 * 32
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(tb.PluginTagToContent("hparams"))
    assert [e.step for e in tb.Scalars("hparam/test_neg_elbo")] == [m["step"] for m in metrics]


def test_no_tensorboard_writes_no_event_files(tmp_path, tiny_data):
    train(tiny(tmp_path / "run", epochs=1, tensorboard=False), data=tiny_data, log=lambda s: None)
    assert not (tmp_path / "run" / "tb").exists()
    assert (tmp_path / "run" / "report.html").is_file()


def test_report_names_what_is_missing_then_shows_the_evaluation(tmp_path, idx_dir, capsys):
    run = train(tiny(tmp_path / "run", epochs=2, data_dir=str(idx_dir)), log=lambda s: None).run_dir
    page = (run / "report.html").read_text()  # refreshed by training, always after the last epoch
    assert "Not evaluated yet" in page and f"convae eval {run} --iw-samples 1000" in page
    assert page.count("<svg") == 4 and not re.search(r"(src|href)=[\"']?(https?:|//)", page)
    assert "KL per latent dimension on the test set" in page

    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert main(["artifacts", str(run), "--device", "cpu", "--images", "64"]) == 0
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    page = (run / "report.html").read_text()
    assert "Not evaluated yet" not in page and "Samples from the prior" in page and "Checkerboard artifacts" in page
    assert f"<td>{evaluation['test_neg_elbo']:.2f}</td>" in page


def test_report_command_checks_its_arguments(tmp_path, tiny_data, capsys):
    a = train(tiny(tmp_path / "a", epochs=1), data=tiny_data, log=lambda s: None).run_dir
    b = train(tiny(tmp_path / "b", epochs=2, lr=3e-3), data=tiny_data, log=lambda s: None).run_dir
    assert main(["report", str(a), str(b)]) == 2
    assert "--out: needed when the report covers several runs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a convae run folder" in capsys.readouterr().err
    out = tmp_path / "both.html"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    page = out.read_text()
    assert "2 runs compared" in page and page.count("id='slider") == 2


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_report_opens_in_a_real_browser_offline(tmp_path, tiny_data):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    run = train(tiny(tmp_path / "run", epochs=3), data=tiny_data, log=lambda s: None).run_dir
    page_file = run / "report.html"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors, failed, remote = [], [], []
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: failed.append(r.url))

            def only_local(route):
                if route.request.url.startswith(("file:", "data:")):
                    return route.continue_()
                remote.append(route.request.url)
                return route.abort()

            page.route("**/*", only_local)
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
            assert sizes and all(done and width > 0 for done, width in sizes), sizes
            assert page.locator("svg").count() == 4

            grid, slider = page.locator("#grid0"), page.locator("#slider0")
            last = grid.get_attribute("src")
            assert page.locator("#label0").inner_text() == "epoch 3"
            slider.fill("0")  # sets the value and fires 'input'
            assert grid.get_attribute("src") != last and page.locator("#label0").inner_text() == "epoch 1"
            assert page.evaluate("document.getElementById('grid0').naturalWidth") > 0
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

            # issue 27: at a laptop's width the results table shows every column without scrolling sideways; the
            # KL-per-dimension chart counts dimensions in whole numbers; the prior samples are on the page
            page.set_viewport_size({"width": 1280, "height": 800})
            assert page.evaluate("(() => { const t = document.querySelector('table'); "
                                 "return t.scrollWidth <= t.clientWidth + 1; })()")
            ticks = page.evaluate("Array.from(document.querySelectorAll('svg')[3].querySelectorAll("
                                  "'g[id^=xtick] text')).map(t => t.textContent.trim())")
            assert ticks and all(re.fullmatch(r"[−-]?\d+", t) for t in ticks), ticks
            assert page.locator("img[alt='samples from the prior']").evaluate("i => i.naturalWidth") > 0

            page.set_viewport_size({"width": 380, "height": 800})  # a phone: nothing wider than the window
            assert page.evaluate("document.documentElement.scrollWidth") <= 380 + 1
            page.screenshot(path=str(tmp_path / "report-narrow.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [] and failed == [] and remote == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_stopped_run_leaves_a_report_of_the_step_it_stopped_at(tmp_path, tiny_data):
    """Issue 27: Ctrl-C or SIGTERM writes a checkpoint; the report is redrawn from it (it showed an older epoch)."""
    from convae.errors import TrainingInterrupted

    from conftest import sigterm_at

    with pytest.raises(TrainingInterrupted):
        train(tiny(tmp_path / "run", epochs=3), data=tiny_data, log=lambda s: None, hooks=sigterm_at(13))
    page = (tmp_path / "run" / "report.html").read_text()
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name == "step-00000014.json" and steps[-1] == 14
    assert page.count("<svg") == 4 and "samples from the prior" in page
    assert (tmp_path / "run" / "report.html").stat().st_mtime >= list_checkpoints(tmp_path / "run" / "checkpoints")[-1].stat().st_mtime


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_a_report_of_two_runs_says_what_each_bound_is_of_and_where_the_runs_differ(tmp_path, tiny_data):
    """Issue 34: a conditional run's bound is on -log p(x | label), said in its own cell; the settings the runs
    differ in are listed above the table; a discrete likelihood's figures come with bits/dim, and no entropy floor
    is promised where there is none; a long run's slider embeds at most 12 pictures."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    import torch

    from convae.data import ImageData

    from conftest import idx_folder

    labelled = ImageData("blobs", tiny_data.train_images, torch.arange(256) % 3, tiny_data.test_images,
                         torch.arange(64) % 3, levels=255.0)
    idx = str(idx_folder(tmp_path / "idx", labelled))
    common = dict(epochs=2, likelihood="logistic", model="fc", data_dir=idx, tensorboard=False)
    plain = train(tiny(tmp_path / "plain", **common), log=lambda s: None).run_dir
    conditional = train(tiny(tmp_path / "cond", conditional=True, **common), log=lambda s: None).run_dir
    for run in (plain, conditional):
        assert main(["eval", str(run), "--iw-samples", "4", "--test-limit", "32", "--no-pictures"]) == 0
    first = plain / "images" / "result1.png"
    for epoch in range(3, 31):  # as if it had trained 30 epochs
        shutil.copy(first, plain / "images" / f"result{epoch}.png")
    out = tmp_path / "both.html"
    assert main(["report", str(plain), str(conditional), "--out", str(out)]) == 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(out.as_uri())
            rows = page.eval_on_selector_all("table tbody tr", "rs => rs.map(r => r.innerText)")
            assert "−log p(x | label)" in rows[1] and "conditional" in rows[1]
            assert "−log p(x)" in rows[0] and "| label" not in rows[0]
            assert "bits/dim" in rows[0] and "bits/dim" in rows[1]
            differ = page.locator("p.differ").inner_text()
            assert differ.startswith("These runs differ in:") and "conditional False, True" in differ
            captions = page.eval_on_selector_all("figcaption", "fs => fs.map(f => f.innerText)")
            assert not any("entropy floor" in c for c in captions) and any("bits per dimension" in c for c in captions)
            assert page.evaluate("document.getElementById('slider0').max") == "11"  # 12 of 30 pictures
            assert "12 of 30 epochs on this page" in page.locator("#grid0 + figcaption").inner_text()
        finally:
            browser.close()
