"""A torchrun entry point for the fault tests: ``convae`` itself, except that on the first attempt the rank named
by ``KILL_RANK`` kills itself with SIGKILL as it is about to take step ``KILL_STEP`` (no handler can run)."""

import os
import signal
import sys

from convae.__main__ import run
from convae.training import Hooks


def before_step(step: int) -> None:
    if (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ["RANK"] == os.environ["KILL_RANK"]
            and step == int(os.environ["KILL_STEP"])):
        os.kill(os.getpid(), signal.SIGKILL)


run(sys.argv[1:], hooks=Hooks(before_step=before_step))
