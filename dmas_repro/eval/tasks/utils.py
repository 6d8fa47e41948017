"""Data loaders for the task YAMLs in this directory (lm-eval resolves `!function utils.NAME` here).

Files are found next to this module, so the tasks work from any working directory and from an
installed package, with no network.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
HELLASWAG_RAW = ["ind", "activity_label", "ctx_a", "ctx_b", "endings", "label"]


def load_hellaswag_dev(**_metadata):
    """{"validation": Dataset} of the bundled HellaSwag slice, raw fields only (lm-eval passes task
    metadata as kwargs). The file's own `query` and `choices` are left out, so the prompt the task
    uses is the one lm-eval's `process_docs` builds."""
    import datasets

    ds = datasets.load_dataset("json", data_files={"validation": str(HERE / "hellaswag_val_dev.jsonl")})
    return ds.select_columns(HELLASWAG_RAW)
