"""A torchrun entry point for the fault tests: ``convae`` itself, except that on the first attempt the rank named
by ``KILL_RANK`` kills itself with SIGKILL as it is about to take step ``KILL_STEP`` (no handler can run)."""

import os
import signal
import sys

import convae.training.loop as loop
from convae.cli import main

original = loop.learning_rate


def learning_rate(config, step, total_steps):
    if (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ["RANK"] == os.environ["KILL_RANK"]
            and step == int(os.environ["KILL_STEP"])):
        os.kill(os.getpid(), signal.SIGKILL)
    return original(config, step, total_steps)


loop.learning_rate = learning_rate
sys.exit(main(sys.argv[1:]))
