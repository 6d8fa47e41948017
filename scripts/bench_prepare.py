#!/usr/bin/env python3
"""prepare-data against tiktoken alone, in one run, on a local file of >= 100M tokens (built in --work from the
bundled corpora when no --source is given; never committed). The same code as `dmas-repro bench prepare`
(dmas_repro/speed/prepare_bench.py):

    scripts/bench_prepare.py --work /tmp/bench-prepare --num-proc 2 --json bench/cpu/prepare_100M.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from dmas_repro.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "prepare", *sys.argv[1:]]))
