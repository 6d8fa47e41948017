"""`dmas-repro bench prepare` (also `scripts/bench_prepare.py`): prepare-data against tiktoken alone.

On one local file (by default built by repeating the bundled corpora, one document per line, to
`--tokens` GPT-2 tokens; kept out of git in the working directory), in one run:

1. tiktoken alone: one process, a plain loop `encode_ordinary(document)` over every document of
   the file, already in memory (no reading, no writing): tokens per second of that loop (wall and
   CPU time); measured before and after step 2, and averaged, so a change in the machine's load
   during the run hits both sides;
2. `dmas-repro prepare-data --source FILE --num-proc N` end to end in a child process (reading,
   tokenizing in N worker processes, writing the shards and the manifest): tokens per second.

Reported: `ratio = prepare-data tokens/s / (N x tiktoken tokens/s)` (the issue's goal: >= 0.8), and
the same in CPU time (tokens per CPU second of the whole process tree against tiktoken's), which a
busy machine moves less.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core import runtime
from ..core.config import opt
from ..core.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class PrepareBenchConfig:
    """`dmas-repro bench prepare`: its flags are derived from these fields."""

    source: str | None = opt(None, "a local .txt (one document per line) or .jsonl file (default: the bundled "
                                   "corpora repeated to --tokens, written into --work)")
    tokens: int = opt(100_000_000, "GPT-2 tokens of the built file")
    work: str | None = opt(None, "working directory (default: a temporary one, removed at the end); a built file "
                                 "there is reused")
    num_proc: int = opt(2, "prepare-data --num-proc (tokenizer processes)")
    shard_tokens: int | None = opt(None, "prepare-data --shard-tokens (default: prepare-data's own for a local file)")
    baseline_docs: int | None = opt(None, "documents in the tiktoken-alone loop (default: all)")


def build_corpus(path: Path, tokens: int) -> dict:
    """The bundled corpora (wiki_demo.txt lines, c4_demo.jsonl texts on one line each) repeated, one document
    per line, until the file holds at least `tokens` GPT-2 tokens."""
    from ..data.prepare import BUNDLED_FILES, CORPORA
    from ..model.tokenizer import gpt2

    docs = []
    for name in BUNDLED_FILES:
        f = CORPORA / name
        for line in f.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            text = json.loads(line)["text"] if f.suffix == ".jsonl" else line
            docs.append(" ".join(text.split("\n")))
    per_copy = sum(len(gpt2().encode(d)) + 1 for d in docs)
    copies = -(-tokens // per_copy)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        block = "".join(d + "\n" for d in docs)
        for _ in range(copies):
            fh.write(block)
    os.replace(tmp, path)
    return {"documents": len(docs) * copies, "tokens_with_eot": per_copy * copies, "copies": copies}


def _tiktoken_alone(docs: list[str]) -> dict:
    from ..model.tokenizer import gpt2

    enc = gpt2()._enc
    c0, t0 = time.process_time(), time.perf_counter()
    n = 0
    for d in docs:
        n += len(enc.encode_ordinary(d))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tokens": n, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": n / wall, "tokens_per_cpu_s": n / cpu}


def run_prepare_bench(pc: PrepareBenchConfig) -> dict:
    from ..data.prepare import LocalFiles
    from .common import command_line, scratch_dir
    from .release import measure

    if pc.num_proc < 1:
        raise UserError("--num-proc must be >= 1")
    res: dict = {"benchmark": "prepare", "command": command_line(), "config": asdict(pc),
                 "machine": runtime.machine_info("cpu")}
    with scratch_dir(pc.work, "dmas-bench-prepare-") as work:
        if pc.source:
            src = Path(pc.source)
            if not src.is_file() or src.suffix not in (".txt", ".jsonl"):
                raise UserError(f"--source {src}: not a .txt or .jsonl file")
        else:
            src = work / f"corpus-{pc.tokens}.txt"
            if not src.is_file():
                log.info(f"writing {src} ({pc.tokens:,} tokens of the bundled corpora, repeated)")
                res["built"] = build_corpus(src, pc.tokens)
        res["source"] = {"path": str(src), "bytes": src.stat().st_size}
        docs = list(LocalFiles([src], "text", "line", str(src))._all())
        if pc.baseline_docs:
            docs = docs[: pc.baseline_docs]
        log.info(f"tiktoken alone over {len(docs):,} documents")
        before = _tiktoken_alone(docs)
        log.info(f"  {before['tokens_per_s'] / 1e6:.2f}M tokens/s")
        n_docs = len(docs)
        del docs

        out = work / "prepared"
        shutil.rmtree(out, ignore_errors=True)
        argv = [sys.executable, "-m", "dmas_repro", "prepare-data", "--source", str(src), "--out", str(out),
                "--num-proc", str(pc.num_proc), "--no-progress"]
        if pc.shard_tokens:
            argv += ["--shard-tokens", str(pc.shard_tokens)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                           os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        log.info(f"prepare-data --num-proc {pc.num_proc}")
        run = measure(argv, work, env, timeout=4 * 3600)
        if run["rc"] != 0:
            raise UserError(f"prepare-data failed: {run['stderr_tail'][-800:]}")
        man = json.loads((out / "manifest.json").read_text())
        tokens = man["tokens"]["train"] + man["tokens"]["val"]
        shards = len(man["shards"]["train"]) + len(man["shards"]["val"])
        log.info(f"  {tokens / run['wall_s'] / 1e6:.2f}M tokens/s")

        docs = list(LocalFiles([src], "text", "line", str(src))._all())[: pc.baseline_docs or None]
        after = _tiktoken_alone(docs)
        del docs
        log.info(f"tiktoken alone again: {after['tokens_per_s'] / 1e6:.2f}M tokens/s")
        alone = (before["tokens_per_s"] + after["tokens_per_s"]) / 2
        alone_cpu = (before["tokens_per_cpu_s"] + after["tokens_per_cpu_s"]) / 2
        prep = {"tokens": tokens, "documents": man["documents"], "shards": shards, "wall_s": run["wall_s"],
                "cpu_s": run.get("cpu_s"), "tokens_per_s": tokens / run["wall_s"],
                "tokens_per_cpu_s": tokens / run["cpu_s"] if run.get("cpu_s") else None,
                "peak_rss_bytes": run["peak_rss_bytes"], "shard_tokens": man["config"]["shard_tokens"]}
        res.update(documents=n_docs, tiktoken_before=before, tiktoken_after=after, prepare=prep,
                   tiktoken_tokens_per_s=alone, ratio=prep["tokens_per_s"] / (pc.num_proc * alone),
                   cpu_ratio=(prep["tokens_per_cpu_s"] / alone_cpu) if prep["tokens_per_cpu_s"] else None)
        shutil.rmtree(out, ignore_errors=True)
    res["machine"]["load_avg_1m_end"] = runtime.load_average()
    return res


def format_prepare(res: dict) -> str:
    p = res["prepare"]
    return (f"tiktoken alone {res['tiktoken_tokens_per_s'] / 1e6:.2f}M tokens/s; prepare-data --num-proc "
            f"{res['config']['num_proc']} {p['tokens_per_s'] / 1e6:.2f}M tokens/s: ratio {res['ratio']:.2f} of "
            f"{res['config']['num_proc']} x tiktoken" + (f", {res['cpu_ratio']:.2f} in CPU time" if res['cpu_ratio']
                                                       else ""))


def markdown(res: dict) -> str:
    m = res["machine"]
    p, b, a = res["prepare"], res["tiktoken_before"], res["tiktoken_after"]
    n = res["config"]["num_proc"]
    lines = [f"#### prepare-data against tiktoken alone: {p['tokens'] / 1e6:,.0f}M tokens, --num-proc {n}", "",
             f"Command: `{res['command']}`  ",
             f"Machine: {m['cpu']}, {m['cpu_count']} cores; Python {m['python']}, git "
             f"{str(m.get('git_commit'))[:12]}; {m.get('time', '')}; 1-min load average {m.get('load_avg_1m')} at "
             f"the start, {m.get('load_avg_1m_end')} at the end", "",
             f"Source: {res['source']['bytes'] / 1e6:,.0f} MB, {res['documents']:,} documents (one per line); "
             f"{p['shards']} shards of {p['shard_tokens']:,} tokens.", "",
             "| what | tokens/s | tokens per CPU-s | wall s |", "|---|---:|---:|---:|",
             f"| tiktoken alone, 1 process (before) | {b['tokens_per_s'] / 1e6:.2f}M | "
             f"{b['tokens_per_cpu_s'] / 1e6:.2f}M | {b['wall_s']:.1f} |",
             f"| `prepare-data --num-proc {n}`, end to end | {p['tokens_per_s'] / 1e6:.2f}M | "
             f"{(p['tokens_per_cpu_s'] or 0) / 1e6:.2f}M | {p['wall_s']:.1f} |",
             f"| tiktoken alone, 1 process (after) | {a['tokens_per_s'] / 1e6:.2f}M | "
             f"{a['tokens_per_cpu_s'] / 1e6:.2f}M | {a['wall_s']:.1f} |", "",
             f"**ratio = {res['ratio']:.2f}** (prepare-data tokens/s / ({n} x tiktoken's mean tokens/s))"
             + (f"; in CPU time {res['cpu_ratio']:.2f}" if res.get("cpu_ratio") else "")
             + f". Peak RSS of prepare-data: {p['peak_rss_bytes'] / 2**20:,.0f} MiB."]
    return "\n".join(lines) + "\n"
