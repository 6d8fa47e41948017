"""The GPT-2 BPE tokenizer, built offline from the vocabulary files bundled in this package."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "gpt2"
ENCODER_JSON = ASSETS / "encoder.json"
VOCAB_BPE = ASSETS / "vocab.bpe"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
EOT_TEXT = "<|endoftext|>"
EOT = 50256
N_VOCAB = 50257
# GPT-2's pre-tokenisation pattern, in the faster equivalent form tiktoken uses for it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class GPT2Tokenizer:
    """encode(str) -> ids, decode(ids) -> str; `eot` is <|endoftext|> (50256)."""

    eot = EOT
    n_vocab = N_VOCAB

    def __init__(self):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(VOCAB_BPE),
            encoder_json_file=str(ENCODER_JSON),
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
        self._enc = tiktoken.Encoding(
            name="gpt2-dmas-repro",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={EOT_TEXT: EOT},
            explicit_n_vocab=N_VOCAB,
        )

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids. Text "<|endoftext|>" is plain text unless `allow_special`."""
        if allow_special:
            return self._enc.encode(text, allowed_special="all")
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str], num_threads: int = 8) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids) -> bytes:
        return self._enc.decode_bytes(list(ids))


@functools.lru_cache(maxsize=1)
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


def files_sha256() -> str:
    """One hash over both vocabulary files: recorded in data manifests."""
    h = hashlib.sha256()
    for p in (ENCODER_JSON, VOCAB_BPE):
        h.update(p.read_bytes())
    return h.hexdigest()


def hf_tokenizer():
    """The same tokenizer as a transformers `PreTrainedTokenizerFast` (for HF exports)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(BPE.from_file(str(ENCODER_JSON), str(VOCAB_BPE)))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=EOT_TEXT,
        eos_token=EOT_TEXT,
        unk_token=EOT_TEXT,
        model_max_length=1024,
    )
    return tok
