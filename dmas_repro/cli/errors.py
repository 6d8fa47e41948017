"""What each `dmas-repro` command refuses with one line on stderr and exit status 2: the one source
of the errors table in README.md ("Commands"; tests/test_cli.py checks that the two match) and of each
command's `--help` epilog."""

from __future__ import annotations

ERRORS: dict[str, str] = {
    "every command": (
        "a path that does not exist, cannot be read or written (`ENOENT`, `EACCES`, `ENOTDIR`, `EEXIST`, "
        "`EROFS`); no space left on the device (finished checkpoints, shards, results and exports stay; the "
        "partial copy is removed)"
    ),
    "prepare-data": (
        "`--out` naming a file (or below one); an unknown source; an empty corpus; a full disk (at the last "
        "finished shard: rerun to continue)"
    ),
    "train": (
        "`--out` naming a file; an unknown config key or stage (with \"did you mean\"), bad batch arithmetic, a "
        "YAML error; missing or damaged data; `--out` that holds checkpoints without `--resume`; a checkpoint "
        "that cannot be read, or an old-format `optimizer.pt`/`rng.pt` holding anything but tensors and "
        "numbers (refused unread); NaN/inf loss (the last good checkpoint stays); no space for a checkpoint "
        "(the earlier ones stay: free space, `--resume`); `RUN/hf/` holding files the export did not write"
    ),
    "info": (
        "a checkpoint directory that does not exist or is not a model; an unknown preset"
    ),
    "export-hf": (
        "`--out` naming a file, the current directory, or a non-empty directory (with `--overwrite`: one "
        "holding anything but an earlier export's config, weights and tokenizer files); `--checkpoint` that "
        "does not exist (a local-looking path is named as missing; `owner/name` not in the cache offline is "
        "said so), is not a model or run directory, or has another architecture; a full disk (an export being "
        "replaced stays as it was)"
    ),
    "import-hf": (
        "`--out` naming a file or a non-empty directory; a source that is neither a directory nor a reachable "
        "hub id; another architecture; missing or truncated shards"
    ),
    "sft": (
        "`--out` naming a file; `--base` that does not exist or is not a model; `--out` holding SFT "
        "checkpoints without `--resume`; bad SFT keys or data files"
    ),
    "chat": (
        "`--checkpoint` that does not exist (named as a missing directory, not as a hub id, when it looks "
        "like a path); `--prompt \"\"`; `--temperature` below 0; `--top-p` outside (0, 1]; `--top-k` or "
        "`--max-new-tokens` below 1; a prompt longer than the context"
    ),
    "eval-all-checkpoints": (
        "`--out` naming a file; `--checkpoints` naming a path that does not exist (a local-looking path is named "
        "as missing; `owner/name` neither in the cache nor on the Hub is said so), before anything is written; a "
        "store made with other settings; an unknown task or part; a bad `--limit`, `--batch-size`, `--shard` or "
        "`--max-disk`. A checkpoint or unit that fails is recorded, the others go on, exit 1"
    ),
    "import-reference": (
        "`--out` naming a file, or a non-empty directory that is not a reference store; an input path that does "
        "not exist or holds no file of the format; a malformed file (not the format's table or JSON, a value "
        "that is not a number, a step given twice, two inputs giving the same row): nothing is written"
    ),
    "ablate": (
        "`--out` naming a file or holding a finished ablation; running it under torchrun"
    ),
    "bench": (
        "a bad `--model`, `--variants`, `--dtype`, `--parts` or size; `--seq-len` beyond the model's context; "
        "`--checkpoint` that does not exist; `report` of a missing file or one that is not a bench result"
    ),
}


def epilog(command: str) -> str:
    """The `--help` epilog of a command: what it refuses (one line, exit 2), wrapped for raw formatters."""
    import textwrap

    return textwrap.fill(f"errors (one line on stderr, exit status 2): {ERRORS[command]}; and for every command: "
                         f"{ERRORS['every command']}.", width=100)
