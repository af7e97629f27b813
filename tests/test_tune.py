"""`convae tune` (issue 35): a search on Optuna whose trials are ordinary run folders trained as packs, pruned at epoch
ends; --trials counts the study's total, so the same command continues a search; an interrupted trial resumes from
its checkpoint and counts once; workers share a study in a real PostgreSQL server started here."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convae.errors import ConfigError

from conftest import run_cli

optuna = pytest.importorskip("optuna", reason="optuna is not installed (pip install optuna)")

from convae.experiments.tune import optuna_module, parse_space  # noqa: E402

optuna_module()  # with convae's filter of Optuna's experimental-API warnings


def search(idx_dir, out, *more):
    return ["tune", "--model", "fc", "--space", "lr=log:1e-4:1e-2", "--space", "beta=0.5:2", "--data-dir",
            str(idx_dir), "--max-steps", "16", "--epochs", "3", "--device", "cpu", "--no-report", "--no-tensorboard",
            "--out", str(out), *more]


def trials_of(out: Path) -> list:
    return optuna.load_study(study_name="convae", storage=f"sqlite:///{out / 'study.db'}").get_trials()


def test_a_search_makes_run_folders_and_a_study_and_the_same_command_adds_what_is_missing(tmp_path, idx_dir, capsys):
    out = tmp_path / "search"
    code, said, err = run_cli(capsys, *search(idx_dir, out, "--trials", "4"))
    assert code == 0, err
    assert sorted(p.name for p in (out / "runs").iterdir()) == [f"trial-{k:04d}" for k in range(4)]
    states = [t.state.name for t in trials_of(out)]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"} and "COMPLETE" in states
    for t in trials_of(out):  # each trial an ordinary run folder, trained with the settings it was asked
        config = json.loads((Path(t.user_attrs["run"]) / "config.json").read_text())["config"]
        assert config["lr"] == pytest.approx(t.params["lr"]) and config["beta"] == pytest.approx(t.params["beta"])
    code, table, _ = run_cli(capsys, "tune", "summary", str(out))
    best = min((t for t in trials_of(out) if t.value is not None), key=lambda t: t.value)
    assert code == 0 and f"best: trial {best.number}, {best.value:.2f}" in table and "importance:" in table
    code, said, err = run_cli(capsys, *search(idx_dir, out, "--trials", "6"))
    assert code == 0, err
    trials = trials_of(out)
    assert len(trials) == 6 and len({json.dumps(t.params, sort_keys=True) for t in trials}) == 6  # new settings
    check_page_in_chromium(out / "report.html", min((t for t in trials if t.value is not None), key=lambda t: t.value))


def check_page_in_chromium(page_file: Path, best) -> None:
    """The search's page in a real browser, offline: no errors, its three plots drawn, the best trial named."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if chromium is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.goto(page_file.as_uri())
            assert page.locator("svg").count() == 3 and errors == []
            assert f"trial {best.number}" in page.locator("p").nth(1).inner_text()
            assert page.locator("table tbody tr").count() >= 2
            page.set_viewport_size({"width": 380, "height": 800})
            assert page.evaluate("document.documentElement.scrollWidth") <= 381
        finally:
            browser.close()


def test_the_space_reads_each_settings_type_and_refuses_what_it_cannot_search():
    space = {d.name: d for d in parse_space(["lr=log:1e-4:1e-2", "kl_warmup=0:100", "model=fc,seed",
                                             "model-option.components=10:50", "beta=0.5:2"])}
    assert space["lr"].kind == "log" and not space["lr"].integer
    assert space["kl_warmup"].integer and space["model_option.components"].integer and not space["beta"].integer
    assert space["model"].choices == ("fc", "seed")
    for bad, said in ((["lr=1e-2:1e-4"], "low < high"), (["lr=log:0:1"], "low > 0"), (["nope=1:2"], "a setting"),
                      (["seed=1:3"], "--seed seeds the search"), (["lr=1:2", "lr=2:3"], "twice")):
        with pytest.raises(ConfigError, match=said):
            parse_space(bad)


def test_a_trial_whose_loss_turns_non_finite_fails_with_its_step_and_the_search_goes_on(tmp_path, idx_dir, capsys):
    out = tmp_path / "search"
    code, said, err = run_cli(capsys, "tune", "--model", "fc", "--space", "lr=1e20,1e-3", "--sampler", "random",
                              "--trials", "4", "--pack", "1", "--data-dir", str(idx_dir), "--max-steps", "8",
                              "--device", "cpu", "--no-report", "--no-tensorboard", "--out", str(out))
    assert code == 0, err
    failed = [t for t in trials_of(out) if t.state.name == "FAIL"]
    assert len(trials_of(out)) == 4 and failed and all(t.params["lr"] == 1e20 for t in failed)
    assert all("loss is not finite" in t.user_attrs["why"] and "step" in t.user_attrs["why"] for t in failed)


def test_an_interrupted_search_resumes_its_trial_from_the_checkpoint_and_counts_it_once(tmp_path, idx_dir):
    out = tmp_path / "search"
    command = [sys.executable, "-m", "convae", *search(idx_dir, out, "--trials", "2", "--pack", "1", "--pruner",
                                                       "none", "--max-steps", "24", "--epochs", "3",
                                                       "--checkpoint-every", "4")]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    trial0 = out / "runs" / "trial-0000" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (trial0.is_dir() and any(trial0.glob("step-*.json"))):
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    assert "-m convae tune" in err  # the command that continues, written as convae was started
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = trials_of(out)
    counted = [t for t in trials if t.state.name == "COMPLETE"]
    folders = sorted(f"trial-{t.user_attrs.get('resumes', t.number):04d}" for t in counted)
    assert len(counted) == 2 and sorted(p.name for p in (out / "runs").iterdir()) == folders  # no folder twice
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].number == 0
    repeated = next(t for t in counted if t.user_attrs.get("resumes") == 0)
    assert repeated.params == interrupted[0].params  # asked again with its settings, in its own folder
    assert "resuming" in (out / "runs" / "trial-0000" / "log.txt").read_text()


def test_a_worker_killed_mid_trial_leaves_it_to_the_next_which_resumes_it_and_counts_it_once(tmp_path, idx_dir):
    """SIGKILL: nothing is handled, no checkpoint written at the end. The trial's heartbeat stops; the next worker to
    start fails it as stale and asks it again with its settings, and the repetition resumes the first attempt's run
    folder from its newest checkpoint."""
    out = tmp_path / "search"
    command = [sys.executable, "-m", "convae", *search(idx_dir, out, "--trials", "2", "--pack", "1", "--pruner",
                                                       "none", "--max-steps", "24", "--epochs", "3",
                                                       "--checkpoint-every", "4", "--heartbeat", "1")]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trial0 = out / "runs" / "trial-0000" / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (trial0.is_dir() and any(trial0.glob("step-*.json"))):
        time.sleep(0.05)
    first.kill()
    first.wait()
    time.sleep(2.5)  # past the grace period of twice the heartbeat
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = trials_of(out)
    stale = [t for t in trials if t.state.name == "FAIL"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert [t.number for t in stale] == [0] and len(done) == 2
    retry = next(t for t in done if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == 0)
    assert retry.params == stale[0].params and retry.user_attrs["run"] == str(out / "runs" / "trial-0000")
    assert "resuming" in (out / "runs" / "trial-0000" / "log.txt").read_text()
    assert len(list((out / "runs").iterdir())) == 2


def test_two_workers_share_one_study_in_postgresql_without_duplicated_or_lost_trials(tmp_path, idx_dir, postgres):
    out = tmp_path / "search"
    command = [sys.executable, "-m", "convae", *search(idx_dir, out, "--trials", "6", "--pack", "1", "--storage",
                                                       postgres, "--max-steps", "8")]
    workers = [subprocess.Popen(command + ["--seed", str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for k in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-1500:] for _, err in results]
    trials = optuna.load_study(study_name="convae", storage=postgres).get_trials()
    trained = [t for t in trials if not t.user_attrs.get("surplus")]
    assert len(trained) == 6 and len({t.number for t in trained}) == 6
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(f"trial-{t.number:04d}" for t in trained)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trained)
