#!/usr/bin/env bash
# The GPU benchmark as one command (H100/H200; about 20 minutes): training steps of the `paper` preset at
# sequence 1024 (ours eager / compiled vs transformers' LlamaForCausalLM eager / compiled, bf16 autocast),
# the effect of the fused chunked cross-entropy and of the micro-batch, then evaluation speed (validation
# loss and lm-eval HellaSwag slice by batch size, eval-all-checkpoints next to lm-eval alone) on a randomly
# initialised paper-size checkpoint, and the commands' seconds and memory at the released scale (no
# network needed). Writes one JSON per part and a markdown section for BENCHMARKS.md:
#
#   scripts/bench_gpu.sh                 # results in bench/gpu/ (or $OUT when set)
#   APPEND=1 scripts/bench_gpu.sh        # also append the section to BENCHMARKS.md
#
# Every part writes its JSON when it finishes, so a part that runs out of time or memory loses only itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/gpu}"
MB="${MB:-8}"
mkdir -p "$OUT"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

run() {  # name, then the arguments of scripts/bench_*.py
    local name="$1"; shift
    echo "== $name: $*"
    if ! timeout "${PART_TIMEOUT:-900}" "$PY" "$@" --json "$OUT/$name.json"; then
        echo "== $name failed (see above); continuing" >&2
    fi
}

# 1. the main comparison (ratio_vs_hf, MFU against 989 TFLOP/s dense bf16 on H100/H200)
run train_paper_b${MB} scripts/bench_train.py --preset paper --seq-len 1024 --micro-batch "$MB" \
    --steps 10 --warmup 3 --rounds 3 --variants ours-compile,ours-eager,hf,hf-compile
# 2. ours compiled without the fused chunked cross-entropy (plain F.cross_entropy over full logits)
run train_paper_b${MB}_plain_ce scripts/bench_train.py --preset paper --seq-len 1024 --micro-batch "$MB" \
    --steps 10 --warmup 3 --rounds 2 --variants ours-compile --ce-chunk-tokens 0
# 3. a larger micro-batch (memory permitting)
run train_paper_b$((MB * 2)) scripts/bench_train.py --preset paper --seq-len 1024 --micro-batch $((MB * 2)) \
    --steps 6 --warmup 3 --rounds 2 --variants ours-compile
# 4. evaluation: validation loss over the authors' 655,360-token budget, lm-eval on the bundled HellaSwag slice
#    by batch size, and eval-all-checkpoints next to lm-eval alone on the same checkpoint (bf16, batch 64)
run eval_paper scripts/bench_eval.py --preset paper --val-tokens 655360 --val-batch-sizes 8,16,32 \
    --lmeval-batch-sizes 8,32,64 --hellaswag-limit 1000 --parts val,lmeval,compare --compare-batch-size 64
# 5. the commands at the released scale: a random checkpoint laid out like a release (2 shards, 6.9 GB),
#    info / import-hf / export-hf (CPU) and eval-all-checkpoints / chat on the GPU: seconds, peak host RSS
#    and GPU memory against the bf16 weights (needs ~21 GB of disk in $WORK, default a new /tmp directory)
WORK="${WORK:-$(mktemp -d /tmp/dmas-bench-release.XXXXXX)}"
PART_TIMEOUT="${PART_TIMEOUT:-1800}" run release_paper scripts/bench_release.py --device cuda --work "$WORK" \
    --limit 200 --val-tokens 655360 --probe-max-new-tokens 64
rm -rf "$WORK"

"$PY" -m dmas_repro bench report "$OUT"/*.json > "$OUT/BENCHMARKS_section.md"
cat "$OUT/BENCHMARKS_section.md"
if [ "${APPEND:-0}" = 1 ]; then
    { echo; echo "### GPU run ($(date -u +%Y-%m-%d))"; echo; cat "$OUT/BENCHMARKS_section.md"; } >> BENCHMARKS.md
    echo "appended to BENCHMARKS.md"
fi
