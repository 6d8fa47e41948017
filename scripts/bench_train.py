#!/usr/bin/env python3
"""Training-speed benchmark: our model (eager and torch.compile'd) vs transformers' LlamaForCausalLM.

The same code as `dmas-repro bench train` (dmas_repro/speed/bench.py); every option is listed by
`scripts/bench_train.py --help`. Example (the CPU goal in BENCHMARKS.md):

    python scripts/bench_train.py --preset tiny --micro-batch 8 --json bench/train_tiny_cpu.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from dmas_repro.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
