"""The data stage: corpus -> token shards, and batches out of them.

- `prepare`: `dmas-repro prepare-data` (bundled corpora, FineWeb-Edu streaming, local files) into
  uint16 shards + manifest, resumable, independent of the process count.
- `shards`: reading a prepared directory back (manifest checks, memory-mapped splits, verify).
- `batches`: deterministic, rank-strided pretraining micro-batches and the fixed validation set.
- `sft_records`: instruction records (Alpaca) -> masked, padded SFT micro-batches.
"""
