"""A torchrun entry point for the fault tests: ``convae`` itself, except that the rank named by ``BAD_RANK`` reads
its data from ``BAD_DATA_DIR`` (a node whose copy of the data is damaged), whatever the options say."""

import os
import sys

import convae.training.loop as loop
from convae.cli import main
from convae.data import load_data

if os.environ["RANK"] == os.environ["BAD_RANK"]:
    loop.load_for_config = lambda config, progress=True: load_data(os.environ["BAD_DATA_DIR"])

sys.exit(main(sys.argv[1:]))
