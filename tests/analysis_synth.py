"""Synthetic inputs with planted answers for the analysis and figure tests.

`write_workspace(root)` lays out results/ and runs/ exactly as the pipeline does (metrics.jsonl,
results.csv, items/, probes.jsonl, ablation summaries, weight-dynamics CSV) from known curves, so
the tests can check that the analysis recovers what was planted. Never shipped as results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

# Planted truths
LOSSES = np.linspace(7.0, 3.0, 10)  # validation loss of 10 base checkpoints, in training order
STEPS = np.arange(1, 11) * 100
TOKENS = STEPS * 4096
TASKS = {  # task: (chance, ceiling, midpoint, slope, n choices)
    "easy_task": (0.25, 0.85, 5.5, 3.0, 4),
    "hard_task": (0.5, 0.80, 3.8, 5.0, 2),
}
N_ITEMS = 600
INSTRUCT_DELTA = 0.05
# A truthfulqa_mc2-shaped task: per-item values are continuous (the probability mass on the true
# answers); item i has K[i] answers of which T[i] are true, so a uniform model scores T/K on it.
MC2_TASK = "mc2_task"
MC2_ITEMS = 400
MC2_MID, MC2_SLOPE = 4.5, 4.0  # planted: the mean score follows a sigmoid in loss around this midpoint
MC2_NOISE = 0.03


def planted_mc2(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(answers K, true answers T, [items, checkpoints] scores) of the mc2-shaped task: item i scores
    its chance T/K plus (1 - T/K) W_i times a sigmoid in loss, plus N(0, MC2_NOISE) noise, kept
    inside [0, 1] (W_i in [0.3, 0.8]: the mean score is the planted sigmoid up to the noise)."""
    rng = np.random.default_rng(1000 + seed)
    k = rng.integers(2, 8, MC2_ITEMS)
    t = np.array([rng.integers(1, ki) for ki in k])
    w = rng.uniform(0.3, 0.8, MC2_ITEMS)
    c = t / k
    g = 1.0 / (1.0 + np.exp(MC2_SLOPE * (LOSSES - MC2_MID)))
    v = c[:, None] + ((1 - c) * w)[:, None] * g[None, :] + rng.normal(0, MC2_NOISE, (MC2_ITEMS, len(LOSSES)))
    return k, t, v.clip(0.0, 1.0)


def sigmoid(loss, chance, ceiling, mid, slope):
    return chance + (ceiling - chance) / (1.0 + np.exp(slope * (np.asarray(loss) - mid)))


def planted_items(task: str, rng: np.random.Generator) -> np.ndarray:
    """[items, checkpoints] correctness: each item has a latent threshold, solved once loss < threshold,
    so accuracy follows the planted sigmoid and items stay solved (monotone trajectories)."""
    chance, ceil, mid, slope, _ = TASKS[task]
    u = rng.random(N_ITEMS)
    p = sigmoid(LOSSES, chance, ceil, mid, slope)
    return (u[:, None] < p[None, :]).astype(int)


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# Planted reference trajectories (other suites' published numbers, as `dmas-repro import-reference` reads
# them): OLMo-ladder runs with accuracy a sigmoid of C4 loss; Pythia JSONs with accuracy rising in log tokens.
REF_TASKS = {"hellaswag_val": (0.25, 0.70, 4.0, 3.0, 1000), "piqa_val": (0.5, 0.75, 4.5, 2.5, 400)}
REF_RUNS = {"190M-1xC": (12, 262144), "1B-1xC": (16, 1048576)}  # checkpoints, batch_size_in_tokens
PYTHIA_SIZES = {"160m": 0.55, "1.4b": 0.70}  # arc_easy ceiling per size
PYTHIA_STEPS = [0, 64, 512, 1000, 3000, 13000, 33000, 73000, 143000]


def olmo_loss(step: np.ndarray, scale: float) -> np.ndarray:
    return 3.0 + 4.0 * np.exp(-step / (scale * 300.0))


def write_reference_sources(d: Path) -> tuple[Path, Path]:
    """OLMo-ladder CSVs and Pythia lm-eval JSONs with planted curves under d/olmo-ladder and d/pythia-evals."""
    import json as _json

    olmo, pythia = d / "olmo-ladder", d / "pythia-evals"
    olmo.mkdir(parents=True, exist_ok=True)
    for run, (k, batch) in REF_RUNS.items():
        steps = np.arange(1, k + 1) * 100
        loss = olmo_loss(steps, k / 12)
        cols = {"_step": steps, "eval/c4_en-validation/CrossEntropyLoss": loss,
                "eval/pile-validation/CrossEntropyLoss": loss - 0.3}
        for key, (ch, ceil, mid, slope, n) in REF_TASKS.items():
            acc = np.round(sigmoid(loss, ch, ceil, mid, slope) * n) / n
            tail = "acc" if key.startswith("boolq") else "len_norm"
            cols[f"eval/downstream/{key}_rc_5shot_{tail}"] = acc.astype(np.float32)
            cols[f"eval/downstream_bpb/{key}_rc_5shot_bpb"] = 0.4 * loss - 0.2
        cols["learning_rate_peak"] = 3e-4
        cols["batch_size_in_tokens"] = batch
        cols["throughput/total_tokens"] = steps * batch
        pd.DataFrame(cols).to_csv(olmo / f"{run}.csv", index=False)
    for size, ceil in PYTHIA_SIZES.items():
        (pythia / f"pythia-{size}").mkdir(parents=True, exist_ok=True)
        for step in PYTHIA_STEPS:
            lt = np.log10(max(step, 1) * 2097152)
            results = {}
            for task, n, ch, c in (("arc_easy", 2376, 0.25, ceil), ("piqa", 1838, 0.5, ceil + 0.1)):
                p = round(sigmoid(-lt, ch, c, -9.0, 4.0) * n) / n
                se = np.sqrt(p * (1 - p) / (n - 1))
                results[task] = {"acc": p, "acc_stderr": se, "acc_norm": p, "acc_norm_stderr": se}
            doc = {"results": results, "versions": {"arc_easy": 0, "piqa": 0},
                   "config": {"model": "hf-causal", "num_fewshot": 0, "batch_size": 16, "limit": None,
                              "model_args": f"pretrained=EleutherAI/pythia-v1.1-{size},revision=step{step}"}}
            (pythia / f"pythia-{size}" / f"{size}_step{step}.json").write_text(_json.dumps(doc))
    return olmo, pythia


def write_reference_store(out: Path, sources: Path) -> Path:
    """The planted sources imported by `dmas-repro import-reference` (both formats) into `out`."""
    from dmas_repro.eval.reference import import_reference

    olmo, pythia = write_reference_sources(sources)
    import_reference("olmo-ladder", [str(olmo)], str(out))
    import_reference("pythia", [str(pythia)], str(out))
    return out


def write_workspace(root: Path, seed: int = 0,
                    parts=("runs", "results", "items", "probes", "ablations", "weights", "reference")):
    rng = np.random.default_rng(seed)
    root = Path(root)
    res_rows, item_rows, probe_rows = [], [], []
    cks = [f"tiny-step_{s:08d}" for s in STEPS]  # labels as the results store writes them
    for t, (*_, k) in TASKS.items():
        m = planted_items(t, rng)
        for j, ck in enumerate(cks):
            acc = m[:, j].mean()
            for metric in ("acc", "acc_norm"):
                res_rows.append(dict(checkpoint=ck, step=int(STEPS[j]), tokens=int(TOKENS[j]), kind="base", task=t,
                                     metric=metric, value=acc, stderr=np.sqrt(acc * (1 - acc) / N_ITEMS), n=N_ITEMS))
            for i in range(N_ITEMS):
                ll = list(rng.normal(-10, 1, k))
                gold = i % k
                item_rows.append(dict(checkpoint=ck, step=int(STEPS[j]), tokens=int(TOKENS[j]), task=t, doc_id=i,
                                      gold=gold, pred=gold if m[i, j] else (gold + 1) % k, acc=int(m[i, j]),
                                      acc_norm=int(m[i, j]), loglikelihoods=ll, gold_nll_per_byte=1.0))
        acc_inst = m[:, -1].mean() + INSTRUCT_DELTA
        for metric in ("acc", "acc_norm"):
            res_rows.append(dict(checkpoint="tiny-sft-hf", step=int(STEPS[-1]), tokens=int(TOKENS[-1]), kind="instruct",
                                 task=t, metric=metric, value=acc_inst, stderr=0.01, n=N_ITEMS))
    k, t, v = planted_mc2(seed)
    for j, ck in enumerate(cks):
        res_rows.append(dict(checkpoint=ck, step=int(STEPS[j]), tokens=int(TOKENS[j]), kind="base", task=MC2_TASK,
                             metric="acc", value=v[:, j].mean(), stderr=v[:, j].std(ddof=1) / np.sqrt(MC2_ITEMS),
                             n=MC2_ITEMS))
        for i in range(MC2_ITEMS):
            item_rows.append(dict(checkpoint=ck, step=int(STEPS[j]), tokens=int(TOKENS[j]), task=MC2_TASK, doc_id=i,
                                  gold=0, golds=[0], pred=0, acc=float(v[i, j]), acc_norm=None,
                                  metrics={"acc": float(v[i, j])}, loglikelihoods=list(rng.normal(-10, 1, k[i])),
                                  gold_nll_per_byte=1.0, chance=float(t[i] / k[i]), n_choices=int(k[i])))
    for j, ck in enumerate(cks):
        res_rows.append(dict(checkpoint=ck, step=int(STEPS[j]), tokens=int(TOKENS[j]), kind="base", task="val_loss",
                             metric="loss", value=float(LOSSES[j]), stderr=np.nan, n=1000))
        for p in range(3):
            for mode, seeds in (("greedy", [0]), ("sample", [1, 2])):
                for s in seeds:
                    probe_rows.append(dict(checkpoint=ck, step=int(STEPS[j]), tokens=int(TOKENS[j]), kind="base",
                                           prompt_id=f"p{p}", category="continuation", mode=mode, seed=s,
                                           prompt=f"Prompt {p}", output=f"output of {ck} " * (j + 1),
                                           repetition_rate=0.9 - 0.08 * j, distinct_1=0.1 + 0.08 * j,
                                           distinct_2=0.2 + 0.07 * j, mean_logprob=-LOSSES[j]))
    for p in range(3):
        probe_rows.append(dict(checkpoint="tiny-sft-hf", step=int(STEPS[-1]), tokens=int(TOKENS[-1]), kind="instruct",
                               prompt_id=f"p{p}", category="instruction", mode="greedy", seed=0, prompt=f"Prompt {p}",
                               output="An answer.", repetition_rate=0.05, distinct_1=0.9, distinct_2=0.95,
                               mean_logprob=-2.5))
    # a second series (as if the released suite had been evaluated) for the overlay figure
    for j in range(4):
        ck = f"step-{j + 1}k"  # as the released checkpoints are labelled
        tok = (j + 1) * 1000 * 524288
        res_rows.append(dict(checkpoint=ck, step=(j + 1) * 1000, tokens=tok, kind="base", task="val_loss",
                             metric="loss", value=3.5 - 0.2 * j, stderr=np.nan, n=1000))
        for t in TASKS:
            res_rows.append(dict(checkpoint=ck, step=(j + 1) * 1000, tokens=tok, kind="base", task=t,
                                 metric="acc_norm", value=0.5 + 0.05 * j, stderr=0.01, n=1000))
    res_dir = root / "results" / "offline"
    if "results" in parts:
        res_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(res_rows).to_csv(res_dir / "results.csv", index=False)
    if "items" in parts:
        df = pd.DataFrame(item_rows)
        for (ck, t), g in df.groupby(["checkpoint", "task"]):
            _jsonl(res_dir / "items" / ck / f"{t}.jsonl", g.to_dict("records"))
    if "probes" in parts:
        _jsonl(res_dir / "probes.jsonl", probe_rows)
    if "runs" in parts:
        write_run(root / "runs" / "tiny", steps=200, seed=seed)
        write_run(root / "runs" / "tiny" / "sft", steps=40, seed=seed + 1, base_loss=3.0)
        (root / "runs" / "tiny" / "config.json").write_text(json.dumps({"preset": "tiny", "max_steps": 200}))
    if "ablations" in parts:
        write_resume_ablation(root / "runs" / "ablate" / "resume")
        write_world_size_ablation(root / "runs" / "ablate" / "world-size")
    if "weights" in parts:
        write_weights_csv(root / "results" / "weights" / "tiny.csv")
    if "reference" in parts:
        write_reference_store(root / "results" / "reference", root / "reference_sources")
    return root


def train_rows(steps: int, seed: int = 0, base_loss: float = 7.0, start: int = 1, tokens_per_step: int = 4096):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(start, steps + 1):
        loss = 3.0 + (base_loss - 3.0) * np.exp(-s / 50) + rng.normal(0, 0.02)
        lr = 6e-4 * min(1.0, s / 10) * (0.55 + 0.45 * np.cos(np.pi * min(s, steps) / steps))
        rows.append(dict(kind="train", step=s, tokens=s * tokens_per_step, loss=loss, lr=lr, grad_norm=1.0,
                         tokens_per_s=1000.0 + rng.normal(0, 5), mfu=0.01, elapsed_s=s * 0.5))
    return rows


def write_run(d: Path, steps: int, seed: int = 0, base_loss: float = 7.0):
    rows = train_rows(steps, seed, base_loss)
    for s in range(0, steps + 1, 20):
        rows.append(dict(kind="val", step=s, tokens=s * 4096, val_loss=3.1 + (base_loss - 3.1) * np.exp(-s / 50)))
        rows.append(dict(kind="hellaswag", step=s, tokens=s * 4096, acc_norm=0.25 + 0.0002 * s))
    rows.append(dict(kind="sample", step=steps, text="Hello, I am a language model, and"))
    rows.sort(key=lambda r: r["step"])
    _jsonl(d / "metrics.jsonl", rows)


SPIKE = 0.8  # planted peak excess loss right after a weights-only resume
RESUME_STEP = 100


def spiked(rows, height: float, tau: float, start: int):
    out = []
    for r in rows:
        r = dict(r)
        if r["step"] > start:
            r["loss"] += height * np.exp(-(r["step"] - start - 1) / tau)
        out.append(r)
    return out


def write_resume_ablation(d: Path):
    ref = train_rows(200, seed=3)
    runs = {"reference": ref, "full_state": ref, "weights_only": spiked(ref, SPIKE, 10.0, RESUME_STEP),
            "weights_only_stretched_lr": spiked(ref, SPIKE * 1.2, 20.0, RESUME_STEP)}
    for name, rows in runs.items():
        keep = rows if name == "reference" else [r for r in rows if r["step"] > RESUME_STEP]
        _jsonl(d / name / "metrics.jsonl", keep)
    (d / "summary.json").write_text(json.dumps({"ablation": "resume", "resume_step": RESUME_STEP,
                                                "spike_full_state": 0.0, "spike_weights_only": SPIKE,
                                                "spike_weights_only_stretched_lr": SPIKE * 1.2}))


def write_world_size_ablation(d: Path):
    base = train_rows(100, seed=4)
    one = train_rows(150, seed=4, start=101)
    two = [dict(r, tokens_per_s=r["tokens_per_s"] * 1.8) for r in one]
    double = [dict(r, tokens=r["tokens"] * 2, tokens_per_s=r["tokens_per_s"] * 1.9) for r in one]
    runs = {"base": (base, 1), "world_size_1": (one, 1), "world_size_2": (two, 2),
            "world_size_2_double_batch": (double, 2)}
    for name, (rows, ws) in runs.items():
        start = {"kind": "event", "step": rows[0]["step"] - 1, "event": "start", "world_size": ws}
        _jsonl(d / name / "metrics.jsonl", [start] + rows)
    (d / "summary.json").write_text(json.dumps({
        "ablation": "world-size", "start_step": 100, "end_step": 150, "same_batch_max_abs_diff": 0.0,
        "segments": [{"run": n, "world_size": ws} for n, (_, ws) in runs.items()]}))


def write_weights_csv(path: Path):
    rows = []
    for j, s in enumerate(STEPS[:5]):
        for layer in range(2):
            for mod in ("attn.wq", "mlp.w_up"):
                rows.append(dict(checkpoint=f"step_{s:08d}", step=int(s), tokens=int(TOKENS[j]),
                                 param=f"layers.{layer}.{mod}.weight", layer=layer, group=f"layer {layer}",
                                 module=mod, numel=100, norm=10.0 + j, prev_norm=np.nan if j == 0 else 9.0 + j,
                                 delta_norm=np.nan if j == 0 else 1.0 / j,
                                 rel_change=np.nan if j == 0 else 1.0 / j / (9.0 + j)))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
