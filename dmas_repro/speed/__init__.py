"""Speed benchmarks (`dmas-repro bench train|eval|report`, scripts/bench_*, JSON in bench/,
BENCHMARKS.md): training steps against transformers' LlamaForCausalLM, and evaluation time."""
