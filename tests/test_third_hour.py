"""The third hour's rough edges (issue 34): a sweep bounded by --max-steps summarises, the commands convae prints can
be pasted, --no- flags say what they do, the planned line and config.json's command tell the truth."""

import json
import sys

import pytest

from convae.cli import build_parser
from convae.config import TrainConfig, option_name, settings_fields
from convae.errors import ConfigError
from convae.experiments.sweep import parse_grid

from conftest import run_cli


def test_a_sweep_bounded_by_max_steps_summarises_its_members_and_says_at_which_step(tmp_path, idx_dir, capsys):
    out = tmp_path / "sweep"
    code, _, err = run_cli(capsys, "sweep", "--seeds", "2", "--grid", "beta=0.5,1", "--model", "fc", "--data-dir",
                           str(idx_dir), "--max-steps", "5", "--device", "cpu", "--no-report", "--no-tensorboard",
                           "--out", str(out))
    assert code == 0, err
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["done"], r["steps"], r["test"]["n"]) for r in rows] == [(2, [5], 2), (2, [5], 2)]
    code, table, _ = run_cli(capsys, "sweep", "summary", str(out))
    assert "| beta = 0.5 | 2 of 2 | 5 |" in table and "–" not in table.split("\n")[2].split("|")[4]


def test_a_sweeps_resume_line_is_written_as_convae_was_started(monkeypatch):
    from convae.cli.sweep import resume_command

    monkeypatch.setattr(sys, "argv", [".venv/bin/convae", "sweep", "--out", "runs/a b"])
    assert resume_command(sys.argv) == ".venv/bin/convae sweep --out 'runs/a b'"
    monkeypatch.setattr(sys, "argv", ["/x/convae/__main__.py", "sweep", "--seeds", "2"])
    assert resume_command(sys.argv).endswith(" -m convae sweep --seeds 2")


def test_every_no_flag_says_what_it_does_as_written():
    """A setting on by default is offered as --no-NAME; its help must describe what --no-NAME does (not the setting
    it turns off). Each such flag and the words its help starts with, so that a new one is read by someone."""
    said = {"--no-cuda-graphs": "on CUDA, launch each step's kernels one by one",
            "--no-shuffle": "take batches in order",
            "--no-tensorboard": "write no TensorBoard event files",
            "--no-report": "don't refresh RUN/report.html"}
    train = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices and "train" in a.choices)
    helps = {o: a.help for a in train.choices["train"]._actions for o in a.option_strings}
    flags = {option_name(f.name) for f in settings_fields() if f.default is True}
    assert flags == set(said)
    for flag, start in said.items():
        assert helps[flag].startswith(start), (flag, helps[flag])
        assert "(default:" in helps[flag]  # and what happens without the flag


def test_a_misspelt_setting_on_the_grid_is_refused_with_the_nearest_name():
    with pytest.raises(ConfigError, match=r"--grid betta=1,2: no setting betta; did you mean beta\?"):
        parse_grid(["betta=1,2"])
    with pytest.raises(ConfigError, match=r"did you mean free-bits\?"):
        parse_grid(["free-bit=0.1"])


def test_the_planned_line_and_config_json_say_what_the_run_does(tmp_path, idx_dir, capsys):
    """--max-steps plans steps, not epochs; a resumed run keeps the command it started with and lists each resume."""
    run = tmp_path / "run"
    base = ["train", "--model", "fc", "--data-dir", str(idx_dir), "--device", "cpu", "--no-report", "--no-tensorboard"]
    code, out, err = run_cli(capsys, *base, "--max-steps", "12", "--progress-every", "4", "--out", str(run))
    assert code == 0, err
    assert "planned: 12 steps (--max-steps), 2 epochs of 8 steps begun;" in out + err
    assert "the seed's 100" not in out + err
    first = json.loads((run / "config.json").read_text())["command"]
    code, _, err = run_cli(capsys, "train", "--resume", str(run), "--max-steps", "20", "--quiet")
    assert code == 0, err
    settings = json.loads((run / "config.json").read_text())
    assert settings["command"] == first and len(settings["resumed_with"]) == 1


def test_exporting_again_into_a_folder_leaves_only_the_new_export(seed_run, tmp_path, capsys):
    out = tmp_path / "export"
    assert run_cli(capsys, "export", str(seed_run), "--format", "safetensors", "--out", str(out))[0] == 0
    (out / "notes.txt").write_text("mine")  # not convae's: it stays
    assert run_cli(capsys, "export", str(seed_run), "--format", "torchscript", "--out", str(out))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["decoder.pt", "encoder.pt", "model.json", "notes.txt"]
    assert json.loads((out / "model.json").read_text())["files"] == ["encoder.pt", "decoder.pt"]


def test_a_run_whose_console_goes_away_trains_on_and_says_so_in_its_log(tmp_path, idx_dir):
    """`convae train ... | head -2`: the reader leaves after two lines; the run goes on to its last step, its lines in
    log.txt, and exits 0 (it ended at the first epoch's end with 'Broken pipe', exit 4, before)."""
    import subprocess

    run = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "convae", "train", "--model", "fc", "--data-dir", str(idx_dir),
                                "--epochs", "4", "--progress-every", "1", "--device", "cpu", "--no-report",
                                "--no-tensorboard", "--out", str(run)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = [process.stdout.readline() for _ in range(2)]
    process.stdout.close()  # as head does after its lines
    _, err = process.communicate(timeout=300)
    assert lines[0].startswith("run folder") and process.returncode == 0, err[-2000:]
    log = (run / "log.txt").read_text()
    assert "the console went away (BrokenPipeError); training goes on" in log
    assert "epoch 4: L_tot" in log and (run / "checkpoints" / "step-00000032.json").is_file()


def test_loss_curves_keep_both_curves_in_the_picture_and_labels_clear_of_ticks(tmp_path, monkeypatch):
    import convae.visualisation as vis

    drawn = {}
    monkeypatch.setattr(vis, "save_figure", lambda fig, path: drawn.setdefault("fig", fig))
    metrics = [{"epoch": e, "step": 10 * e, "test_neg_elbo": 100 - e, "train_loss": 170 - 4 * e, "train_seconds": 3 * e,
                "entropy_floor": 60.0} for e in range(1, 16)]
    vis.loss_curves(metrics, tmp_path / "l.png", title="t")
    fig = drawn["fig"]
    fig.canvas.draw()
    for ax in fig.axes:
        low, high = ax.get_ylim()
        for line in ax.get_lines():
            ys = list(line.get_ydata())[1:]  # from the second epoch on
            if len(ys) > 1:
                assert all(low <= y <= high for y in ys), (ax.get_ylabel(), line.get_label(), low, high)
        renderer = fig.canvas.get_renderer()
        label = ax.yaxis.label.get_window_extent(renderer)
        for tick in ax.get_yticklabels():
            if tick.get_text():
                assert not label.overlaps(tick.get_window_extent(renderer)), ax.get_ylabel()


@pytest.mark.parametrize("launched", [False, True], ids=["alone", "torchrun-worker"])
def test_a_launched_worker_leaves_without_the_interpreters_teardown(launched):
    """Point 13: the abort came from the interpreter's teardown racing a gloo thread that torch keeps alive after
    destroy_process_group; a worker (RANK and WORLD_SIZE set) skips that teardown, keeping its code and its output,
    while a process of its own exits as usual (atexit handlers run)."""
    import os
    import subprocess

    program = ("import atexit, convae.cli as cli, convae.__main__ as program\n"
               "atexit.register(print, 'teardown ran')\n"
               "cli.main = lambda argv, hooks: print('the command ran') or 3\n"
               "program.run()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    if launched:
        env.update(RANK="1", WORLD_SIZE="2")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "the command ran" in done.stdout  # flushed through the pipe before os._exit
    assert ("teardown ran" in done.stdout) is not launched


def test_the_convae_script_runs_the_program_python_m_convae_runs():
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="console_scripts") if e.name == "convae"] == ["convae.__main__:run"]


def test_importing_convae_imports_only_its_version():
    """What Python imports before convae's own code can catch a Ctrl-C (the package, for `python -m convae`)."""
    import subprocess

    code = "import sys, convae\nprint(sorted(m for m in sys.modules if m.startswith('convae')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "['convae', 'convae.version']", done.stdout + done.stderr
