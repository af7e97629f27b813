"""A torchrun entry point: ``convae`` itself, with the IW bound taken in batches of ``IW_BATCH`` test images (so
that a small test set makes several batches to share among the ranks)."""

import os
import sys

import convae.evaluation.report as report
from convae.cli import main

report.IW_BATCH = int(os.environ["IW_BATCH"])
sys.exit(main(sys.argv[1:]))
