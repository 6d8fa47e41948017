"""The one canonical chat format: the Vicuna 1.1 prompt the instruct checkpoint was tuned with.

Instruction tuning (`dmas_repro.train.sft`), `dmas-repro chat` and the evaluation probes all build
prompts with `chat_prompt`; training appends `answer_text(output)` and then <|endoftext|>.
"""

from __future__ import annotations

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def chat_prompt(instruction: str, input: str = "") -> str:
    """The Vicuna 1.1 prompt: system line, ` USER: {instruction}` (+ `\\n{input}`), ` ASSISTANT:`."""
    user = f"{instruction}\n{input}" if input else instruction
    return f"{SYSTEM} USER: {user} ASSISTANT:"


def answer_text(output: str) -> str:
    """The text that follows the prompt in training (then <|endoftext|>, appended as a token id)."""
    return f" {output}"
