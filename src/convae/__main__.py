import os
import sys

from .cli import main

code = main()
if "TORCHELASTIC_RUN_ID" in os.environ:
    # A torchrun worker whose work is done (its files written atomically, its process group destroyed) leaves
    # without the interpreter's teardown: there, now and then, a gloo thread still joinable is destroyed and
    # std::terminate aborts the worker (SIGABRT, "terminate called without an active exception": seen in CI and in
    # the suite), and torchrun reports a finished run as failed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
