"""The house's rules, checked: layers import only downward (import-linter's contract in pyproject.toml), every
setting is an option (or internal on purpose), and the command line starts without torch and stops on Ctrl-C with
one line at any moment of its start."""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convae.config import RESUMABLE, TrainConfig, option_name

ROOT = Path(__file__).parent.parent


def test_every_layer_imports_only_the_layers_below_it():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def train_parser():
    import argparse

    from convae.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_setting_is_an_option_with_its_help_choices_and_default():
    options = {a.dest: a for a in train_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("internal"):
            assert f.name not in options, f"{f.name} is internal but has an option"
            continue
        action = options.get(f.name)
        assert action is not None, f"setting {f.name} has no option"
        assert action.option_strings == [option_name(f.name)] and action.default is None, f.name
        assert action.help.startswith(f.metadata["help"]), f.name
        if f.default not in (None, dataclasses.MISSING) and not isinstance(f.default, bool):
            assert action.help.endswith(f"(default {f.default})"), f.name
        if f.metadata["choices"] and f.name != "model":  # the model is checked against the catalog, by name
            assert tuple(action.choices) == f.metadata["choices"], f.name
    assert options["shuffle"].option_strings == ["--no-shuffle"] and options["compile"].option_strings == ["--compile"]
    assert {"epochs", "max_steps", "device", "quiet", "tensorboard", "report"} <= RESUMABLE
    assert not {"lr", "model", "batch_size", "seed", "data"} & RESUMABLE


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["compare", "--help"], ["eval", "--help"]])
def test_help_answers_without_importing_torch(argv):
    code = ("import sys\nfrom convae.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')" % argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().endswith("no torch"), done.stdout[-500:] + done.stderr[-500:]
    assert "usage: convae" in done.stdout


@pytest.mark.parametrize("argv, line", [(["train", "--epochs", "3"], "convae train: interrupted"),
                                        (["--plugin", "mine", "sweep", "summary"], "convae sweep: interrupted"),
                                        (["--plugin=mine", "eval", "RUN"], "convae eval: interrupted"),
                                        (["--help"], "convae: interrupted")])
def test_an_interrupt_before_the_command_began_names_the_command(argv, line):
    from convae.signals import interrupted_line

    assert interrupted_line(argv) == line


@pytest.mark.parametrize("delay", [0.2, 0.6, 1.2, 2.5])
def test_ctrl_c_at_any_moment_of_startup_is_one_line_and_exit_130(tmp_path, idx_dir, delay):
    """SIGINT while Python imports torch, reads the data, builds the model or trains: never a traceback."""
    process = subprocess.Popen([sys.executable, "-m", "convae", "train", "--data-dir", str(idx_dir), "--out",
                                str(tmp_path / "run"), "--device", "cpu", "--quiet", "--no-report",
                                "--no-tensorboard", "--epochs", "500"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=120)
    finally:  # a run that missed its Ctrl-C must not train on beside the rest of the suite
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err == "convae train: interrupted\n" or err.startswith("convae: SIGINT at step "), err


# A factory of the seed's encoder and decoder that,, the first time it is called, receives a Ctrl-C that a "library"
# inside it catches and drops: the command's own handler never sees it.
SWALLOWING_PLUGIN = '''
import os, signal, time
import convae

_done = []

@convae.register_model("swallows", description="the seed model; its factory drops one Ctrl-C")
def build(image_size, channels, likelihood, classes):
    if not _done:
        _done.append(1)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass
    return convae.VAE(convae.make_encoder("conv", image_size, 2, channels, classes),
                      convae.make_decoder("seed", 2 + classes, image_size, channels * likelihood.params_per_channel),
                      2, likelihood, classes)
'''


def test_a_ctrl_c_that_a_library_drops_still_stops_training_at_its_first_step(tmp_path, idx_dir):
    (tmp_path / "swallowing.py").write_text(SWALLOWING_PLUGIN)
    done = subprocess.run([sys.executable, "-m", "convae", "train", "--plugin", "swallowing", "--model", "swallows",
                           "--data-dir", str(idx_dir), "--out", str(tmp_path / "run"), "--device", "cpu", "--quiet",
                           "--no-report", "--no-tensorboard", "--epochs", "500"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 130, done.stderr
    assert done.stderr.startswith("convae: SIGINT at step 1: checkpoint written"), done.stderr
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_a_process_started_with_ctrl_c_ignored_answers_it_from_its_first_line():
    """A background job of a non-interactive shell inherits SIGINT ignored; convae takes it back before it imports
    anything heavy (Python itself leaves an inherited SIG_IGN alone)."""
    code = "import signal, convae.__main__\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.stdout.strip() == "True", done.stdout + done.stderr
