"""`dmas-repro bench release` (also `scripts/bench_release.py`): the commands at the released scale.

1. Build a checkpoint laid out like a released one, with random weights: transformers'
   `LlamaForCausalLM` made on the meta device, materialised with `to_empty`, every Linear/Embedding
   weight drawn from N(0, 0.02) by a seeded generator (norms 1), saved by `save_pretrained` in 5 GB
   safetensors shards (the `paper` size gives 4.98 GB + 1.88 GB, as released), then the config.json
   that transformers 4.44.2 wrote for the release (../shared/PAPER.md: bos/eos 1/2, `torch_dtype`,
   655 bytes at the paper size), its generation_config.json and the GPT-2 tokenizer files. Any size
   of the family: `--preset` and `--model KEY=VALUE`.
2. Run each command on it in a child process, one at a time, and record its wall time and peak
   resident memory (`/usr/bin/time -v` when present, else sampling the process tree with psutil; on
   CUDA also the GPU memory nvidia-smi reports for it), against the weights' bytes in the working
   dtype (float32 on CPU, bfloat16 on CUDA): `info`, `import-hf`, `export-hf`,
   `eval-all-checkpoints` on the offline suite with small limits (its per-unit seconds and peak
   memory from OUT/timings/), and `chat --prompt`.

The JSON result renders as a BENCHMARKS.md section (`dmas-repro bench report`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core import runtime
from ..core.config import opt
from ..core.errors import UserError

log = logging.getLogger(__name__)

COMMANDS = ("info", "import-hf", "export-hf", "eval-all", "chat")
# config.json of a released checkpoint as transformers 4.44.2 wrote it (../shared/PAPER.md); sizes filled in.
RELEASE_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 5120, "max_position_embeddings": 1024, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False,
    "torch_dtype": "float32", "transformers_version": "4.44.2", "use_cache": True, "vocab_size": 50257,
}
RELEASE_GENERATION_CONFIG = {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                             "transformers_version": "4.44.2"}


def _commands(text: str) -> tuple[str, ...]:
    got = tuple(c for c in text.split(",") if c)
    bad = [c for c in got if c not in COMMANDS]
    if bad or not got:
        raise UserError(f"--commands {text!r}: choose from {','.join(COMMANDS)}")
    return got


@dataclass
class ReleaseBenchConfig:
    """`dmas-repro bench release`: its flags are derived from these fields."""

    preset: str = opt("paper", "model size (a preset of the family)")
    model: dict = opt(help="override a model config field, e.g. --model n_layer=4 (repeatable)", factory=dict,
                      action="append", metavar="KEY=VALUE", parse=str,
                      convert=lambda items: _overrides(items))
    seed: int = opt(0, "seed of the random weights")
    work: str | None = opt(None, "working directory (default: a temporary one, removed at the end); a model "
                                 "built there before is reused")
    device: str = opt("cpu", "cpu or cuda (eval-all-checkpoints and chat run there)")
    commands: tuple[str, ...] = opt(COMMANDS, f"comma list from {','.join(COMMANDS)}", parse=_commands)
    limit: int = opt(8, "eval-all: items of the offline HellaSwag slice")
    val_tokens: int = opt(8192, "eval-all: validation tokens")
    probe_max_new_tokens: int = opt(8, "eval-all: tokens per probe generation")
    chat_max_new_tokens: int = opt(8, "chat: tokens generated")
    timeout: int = opt(3600, "seconds each command may take")


def _overrides(items):
    from .common import parse_overrides

    return parse_overrides(items)


# ---------------------------------------------------------------- the model
def release_config(cfg) -> dict:
    """The released config.json's keys with this model's sizes."""
    return {**RELEASE_CONFIG, "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim,
            "max_position_embeddings": cfg.context_length, "num_attention_heads": cfg.n_head,
            "num_hidden_layers": cfg.n_layer, "num_key_value_heads": cfg.n_kv_head, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": int(cfg.rope_theta) if float(cfg.rope_theta).is_integer() else cfg.rope_theta,
            "initializer_range": cfg.init_std}


def build_release_model(cfg, out: str | os.PathLike, seed: int = 0) -> Path:
    """A random checkpoint of our architecture laid out like a released one (see the module docstring)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..core.files import atomic_dir
    from ..model import hf

    config = release_config(cfg)
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "transformers_version"}))
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, cfg.init_std, generator=gen)
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, max_shard_size="5GB", safe_serialization=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(RELEASE_GENERATION_CONFIG, indent=2,
                                                               sort_keys=True) + "\n")
        hf.write_tokenizer_files(tmp)
    return out


# ---------------------------------------------------------------- measuring a command
_TIME_FIELDS = {"Maximum resident set size (kbytes)": "peak_rss_kb", "Elapsed (wall clock) time": "wall",
                "User time (seconds)": "user_s", "System time (seconds)": "sys_s", "Exit status": "exit"}


def _parse_time_v(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        for key, name in _TIME_FIELDS.items():
            if line.strip().startswith(key):
                out[name] = line.split(": ", 1)[1].strip() if ": " in line else line.rsplit(" ", 1)[-1]
    return out


def _wall_seconds(text: str) -> float:
    parts = [float(x) for x in text.split(":")]
    secs = 0.0
    for p in parts:
        secs = secs * 60 + p
    return secs


class _GpuPeak:
    """The most GPU memory nvidia-smi reports for a process (polled every 0.2 s; includes its CUDA context)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.2):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,"
                                      "nounits"], capture_output=True, text=True, timeout=5).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            pids = _process_tree(self.pid)
            for line in out.splitlines():
                pid, _, mib = line.partition(",")
                if pid.strip().isdigit() and int(pid) in pids and mib.strip().isdigit():
                    self.peak = max(self.peak, int(mib) * 2**20)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def _process_tree(pid: int) -> set[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return {pid, *(c.pid for c in p.children(recursive=True))}
    except psutil.Error:
        return {pid}


def measure(argv: list[str], cwd: Path, env: dict, timeout: int, gpu: bool = False) -> dict:
    """Run a command; its wall seconds, peak resident memory (the largest of the process tree: what
    /usr/bin/time reports), exit status and the tail of its output."""
    use_time = Path("/usr/bin/time").is_file()
    cmd = (["/usr/bin/time", "-v"] if use_time else []) + argv
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gpu_peak = _GpuPeak(proc.pid) if gpu else None
    sampled = _sample_rss(proc.pid) if not use_time else None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n(killed after {timeout} s)"
    wall = time.perf_counter() - t0
    res = {"argv": argv, "rc": proc.returncode, "wall_s": wall, "stdout_tail": out[-2000:],
           "stderr_tail": "\n".join(line for line in err.splitlines()[-40:] if "\r" not in line)[-4000:]}
    if use_time:
        t = _parse_time_v(err)
        res.update(peak_rss_bytes=int(t.get("peak_rss_kb", 0)) * 1024, memory_tool="/usr/bin/time -v",
                   wall_s=_wall_seconds(t["wall"]) if "wall" in t else wall,
                   cpu_s=float(t.get("user_s", 0)) + float(t.get("sys_s", 0)))
        if proc.returncode == 0 and "exit" in t:
            res["rc"] = int(t["exit"])
    else:
        res.update(peak_rss_bytes=sampled.stop(), memory_tool="psutil, process tree sampled every 10 ms")
    if gpu_peak is not None:
        res["gpu_peak_bytes"] = gpu_peak.stop()
    return res


class _sample_rss:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.01):
            try:
                procs = [psutil.Process(p) for p in _process_tree(self.pid)]
                self.peak = max(self.peak, max(p.memory_info().rss for p in procs))
            except psutil.Error:
                continue

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


# ---------------------------------------------------------------- the benchmark
def run_release_bench(bc: ReleaseBenchConfig) -> dict:
    import psutil
    import torch

    from ..model.transformer import Transformer, preset

    cfg = preset(bc.preset).with_(**bc.model, vocab_size=50257)
    device = str(runtime.resolve_device(bc.device))
    gpu = device.startswith("cuda")
    with torch.device("meta"):
        n_params = Transformer(cfg).num_params()
    work_dtype = "bfloat16" if gpu else "float32"
    weights = {"float32": n_params * 4, "bfloat16": n_params * 2}
    from .common import command_line, scratch_dir

    res: dict = {"benchmark": "release", "command": command_line(), "config": asdict(bc),
                 "model_config": cfg.to_dict(), "params": n_params, "device": device, "working_dtype": work_dtype,
                 "weights_bytes": weights, "machine": runtime.machine_info(device), "commands": {}}
    with scratch_dir(bc.work, "dmas-bench-release-") as work:
        src = work / "release"
        if not (src / "config.json").is_file():
            log.info(f"building a random {n_params / 1e9:.2f}B-parameter checkpoint in {src}")
            t0 = time.perf_counter()
            build_release_model(cfg, src, bc.seed)
            res["build_s"] = time.perf_counter() - t0
        res["files"] = {f.name: f.stat().st_size for f in sorted(src.iterdir())}
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                              os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        dr = [sys.executable, "-m", "dmas_repro"]
        val = work / "val"
        if "eval-all" in bc.commands and not (val / "manifest.json").is_file():
            r = subprocess.run(dr + ["prepare-data", "--source", "bundled", "--out", str(val), "--no-progress"],
                               env=env, capture_output=True, text=True)
            if r.returncode:
                raise UserError(f"prepare-data for the validation tokens failed: {r.stderr.strip()[-500:]}")
        runs = {
            "info": dr + ["info", "--checkpoint", str(src)],
            "import-hf": dr + ["import-hf", str(src), "--out", str(work / "imported")],
            "export-hf": dr + ["export-hf", "--checkpoint", str(work / "imported"), "--out", str(work / "exported")],
            "eval-all": dr + ["eval-all-checkpoints", "--checkpoints", str(src), "--suite", "offline", "--limit",
                              str(bc.limit), "--val-data", str(val), "--val-tokens", str(bc.val_tokens),
                              "--probe-seeds", "0", "--probe-max-new-tokens", str(bc.probe_max_new_tokens),
                              "--device", device, "--out", str(work / "results")],
            "chat": dr + ["chat", "--checkpoint", str(src), "--prompt", "What is the capital of France?",
                          "--max-new-tokens", str(bc.chat_max_new_tokens), "--device", device],
        }
        for name in COMMANDS:
            if name not in bc.commands:
                continue
            if name == "export-hf" and not (work / "imported").is_dir():
                log.warning("export-hf needs import-hf's output; skipped")
                continue
            for stale in {"import-hf": ["imported"], "export-hf": ["exported"], "eval-all": ["results"]}.get(name, []):
                shutil.rmtree(work / stale, ignore_errors=True)
            avail = psutil.virtual_memory().available
            log.info(f"{name}: {' '.join(runs[name][2:])} ({avail / 2**30:.1f} GiB available)")
            r = measure(runs[name], work, env, bc.timeout, gpu=gpu and name in ("eval-all", "chat"))
            r["available_before_bytes"] = avail
            dtype = work_dtype if name in ("eval-all", "chat") else "float32"
            r["dtype"] = dtype
            r["peak_over_weights"] = r["peak_rss_bytes"] / weights[dtype] if not gpu or dtype == "float32" else None
            if r.get("gpu_peak_bytes"):
                r["gpu_peak_over_weights"] = r["gpu_peak_bytes"] / weights[dtype]
            if name == "eval-all":
                r["units"] = _eval_units(work / "results")
            if r["rc"] != 0:
                log.warning(f"{name} failed (exit {r['rc']}):\n{r['stderr_tail'][-1500:]}")
            ratio = r["peak_over_weights"]
            log.info(f"  {r['wall_s']:.1f}s, peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB"
                     + (f" ({ratio:.2f}x the {dtype} weights)" if ratio else ""))
            res["commands"][name] = r
            if name == "export-hf":
                shutil.rmtree(work / "exported", ignore_errors=True)
        shutil.rmtree(work / "imported", ignore_errors=True)
    res["machine"]["load_avg_1m_end"] = runtime.load_average()
    return res


def _eval_units(results: Path) -> dict:
    f = next((results / "timings").glob("*.json"), None) if (results / "timings").is_dir() else None
    if f is None:
        return {}
    t = json.loads(f.read_text())
    return {"seconds": t["seconds"], "peak_memory_bytes": t["peak_memory_bytes"], "kind": t["peak_memory_kind"]}


# ---------------------------------------------------------------- markdown
def markdown(res: dict) -> str:
    m = res["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m.get('cpu_count', '?')} cores"
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB" if m.get("memory_bytes") else ""
    versions = (f"torch {m['torch']}, transformers {m.get('transformers', '-')}, lm-eval {m.get('lm_eval', '-')}, "
                f"Python {m['python']}; git {str(m.get('git_commit'))[:12]}")
    c = res["model_config"]
    w = res["weights_bytes"]
    lines = [f"#### Released scale: {res['params'] / 1e9:.3f}B parameters ({c['n_layer']} layers, dim {c['dim']}), "
             f"{res['device']}", "",
             f"Command: `{res['command']}`  ",
             f"Machine: {where}{mem} ({res['device']}); {versions}; {m.get('time', '')}; 1-min load average "
             f"{m.get('load_avg_1m', '-')} at the start, {m.get('load_avg_1m_end', '-')} at the end", "",
             "Checkpoint: " + ", ".join(f"`{k}` {v / 1e9:.2f} GB" if v > 1e8 else f"`{k}`"
                                        for k, v in res.get("files", {}).items() if k.endswith(".safetensors"))
             + f"; weights {w['float32'] / 2**30:.2f} GiB in float32, {w['bfloat16'] / 2**30:.2f} GiB in bfloat16.", "",
             "| command | wall s | peak RSS | peak / weights | " + ("GPU peak | GPU peak / weights | " if
                                                                   res["device"].startswith("cuda") else "")
             + "exit |",
             "|---|---:|---:|---:|" + ("---:|---:|" if res["device"].startswith("cuda") else "") + "---:|"]
    for r in res["commands"].values():
        shown = " ".join(["dmas-repro"] + [_short(a, res) for a in r["argv"][3:]])
        ratio = f"{r['peak_over_weights']:.2f}x ({r['dtype']})" if r.get("peak_over_weights") else "-"
        gpu = ""
        if res["device"].startswith("cuda"):
            g = r.get("gpu_peak_bytes")
            gpu = (f"{g / 2**30:.2f} GiB | {r['gpu_peak_over_weights']:.2f}x | " if g else "- | - | ")
        lines.append(f"| `{shown}` | {r['wall_s']:.1f} | {r['peak_rss_bytes'] / 2**30:.2f} GiB | {ratio} | {gpu}"
                     f"{r['rc']} |")
    units = res["commands"].get("eval-all", {}).get("units")
    if units:
        lines += ["", f"eval-all-checkpoints, per phase of the checkpoint (OUT/timings/; peak memory so far: "
                  f"{units['kind']}):", "", "| phase | seconds | peak memory so far |", "|---|---:|---:|"]
        for k, v in units["seconds"].items():
            pk = units["peak_memory_bytes"].get(k)
            lines.append(f"| {k} | {v:.2f} | {'-' if pk is None else f'{pk / 2**30:.2f} GiB'} |")
    lines += ["", f"Peak RSS: {next(iter(res['commands'].values()), {}).get('memory_tool', '-')}, the whole "
              "process (Python, torch, transformers, lm-eval included); weights = parameters x bytes of the dtype."]
    return "\n".join(lines) + "\n"


def _short(arg: str, res: dict) -> str:
    return re.sub(r"^/.*/(release|imported|exported|results|val)$", r"\1", arg)
