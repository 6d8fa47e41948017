"""Data loaders for the task YAMLs in this directory (lm-eval resolves `!function utils.NAME` here).

Files are found next to this module, so the tasks work from any working directory and from an
installed package, with no network.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_hellaswag_dev(**_metadata):
    """{"validation": Dataset} of the bundled HellaSwag slice (lm-eval passes task metadata as kwargs)."""
    import datasets

    return datasets.load_dataset("json", data_files={"validation": str(HERE / "hellaswag_val_dev.jsonl")})
