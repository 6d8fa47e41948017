#!/usr/bin/env python3
"""Evaluation-speed benchmark: seconds per checkpoint for validation loss, lm-eval throughput by batch size.

The same code as `dmas-repro bench eval` (dmas_repro/speed/bench.py); see `scripts/bench_eval.py --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from dmas_repro.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "eval", *sys.argv[1:]]))
