"""A torchrun entry point for the fault tests: ``convae`` itself, except that the rank named by ``BAD_RANK`` reads
its data from ``BAD_DATA_DIR`` (a node whose copy of the data is damaged), whatever the options say."""

import os
import sys

import convae.training.loop as loop
from convae.cli import main

if os.environ["RANK"] == os.environ["BAD_RANK"]:
    original = loop.load_data
    loop.load_data = lambda data_dir=None: original(os.environ["BAD_DATA_DIR"])

sys.exit(main(sys.argv[1:]))
