"""Downloads from the Hugging Face Hub (weights and tokenizer files only).

Everything online goes through `snapshot_download`; offline (HF_HUB_OFFLINE=1, or no
network) a repo already in the cache is used and anything else is one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import UserError

MODEL_FILES = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]


# Other suites' models (reference checkpoints: Pythia, OLMo, TinyLlama) may store pickled PyTorch weights
# instead of safetensors, and a SentencePiece tokenizer: downloaded for them only when the revision has no
# safetensors (`dmas_repro.eval.sources`).
BIN_FILES = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
EXTRA_TOKENIZER_FILES = ["tokenizer.model"]


def looks_like_repo_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~"))


def download(repo_id: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
             allow_patterns: list[str] | None = None) -> Path:
    """Resumable download of a model repo's weights and tokenizer into the HF cache (`allow_patterns`:
    the files to fetch, default MODEL_FILES)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(
            snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                              allow_patterns=MODEL_FILES if allow_patterns is None else allow_patterns)
        )
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id}: no such model repository on the Hugging Face Hub") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"{repo_id}: not in the local cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1); download it on a connected machine or pass a local directory"
        ) from None
    except HfHubHTTPError as e:
        raise UserError(f"{repo_id}: download failed ({e})") from None
    except OSError as e:
        raise UserError(f"{repo_id}: download failed ({e})") from None


def resolve(source: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory as is, or a hub id downloaded."""
    p = Path(source).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{p}: not a directory")
        return p
    if looks_like_repo_id(source):
        return download(source, revision, cache_dir)
    raise UserError(f"{source}: no such directory (and not a hub id like owner/name)")
