import os
import time
from pathlib import Path

import pytest

# The whole suite runs offline: no hub, no dataset downloads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# ---------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tiny models (on 2 shared cores it is much faster than two)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------- data for the training tests
@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """20,000 tokens of the bundled corpora prepared once per session (read only: copy it to change it)."""
    from dmas_repro.data import prepare as prep

    d = tmp_path_factory.mktemp("data") / "bundled"
    prep.prepare(prep.PrepareConfig(source="bundled", max_tokens=20_000, val_tokens=2_000), d, progress=False)
    return d


# ---------------------------------------------------------------- the embedded default pipeline
@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """`dmas-repro train` with no arguments, run once per session in a fresh working directory.

    Yields its run directory (runs/tiny: config.json, metrics.jsonl, checkpoints/, hf/ and the
    directories of later stages). The wall time is in `default_run_seconds.txt` beside `runs/`.
    This is the one place the suite runs the full default pipeline: other tests reuse it.
    """
    from dmas_repro.cli import main

    work = tmp_path_factory.mktemp("default_run")
    old = os.getcwd()
    os.chdir(work)
    t0 = time.perf_counter()
    try:
        rc = main(["train"])
    finally:
        os.chdir(old)
    (work / "default_run_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    assert rc == 0, "the no-argument `dmas-repro train` failed"
    return work / "runs" / "tiny"
