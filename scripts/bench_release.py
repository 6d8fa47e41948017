#!/usr/bin/env python3
"""The commands at the released scale: builds a random checkpoint laid out like a released one (seeded, any
size of the family) and measures info, import-hf, export-hf, eval-all-checkpoints and chat on it (seconds,
peak memory against the weights' bytes). The same code as `dmas-repro bench release` (dmas_repro/speed/release.py):

    scripts/bench_release.py --json bench/cpu/release_paper.json            # the paper size, ~10 min, 21 GB disk
    scripts/bench_release.py --model n_layer=4 --work /tmp/rel             # a smaller member of the family
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing

from dmas_repro.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "release", *sys.argv[1:]]))
