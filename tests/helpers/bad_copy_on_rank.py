"""A torchrun entry point for the fault tests: ``convae`` itself, except that the rank named by ``BAD_RANK`` reads
its data from ``BAD_DATA_DIR`` (a node whose copy of the data is damaged), whatever the options say."""

import os
import sys

from convae.__main__ import run
from convae.data import load_data
from convae.training import Hooks

bad = os.environ["RANK"] == os.environ["BAD_RANK"]
run(sys.argv[1:], hooks=Hooks(load_data=lambda config: load_data(os.environ["BAD_DATA_DIR"])) if bad else None)
