from dmas_repro.model.tokenizer import EOT, gpt2, hf_tokenizer

VARIED = (
    "Hello, I am a language model, and I'll say: it's 2024 — naïve café, 東京, emoji 🎉🚀!\n"
    "\tIndented   spaces,   numbers 3.14159 and 1,000,000; code `x = y**2`\r\n"
    "Ünïcödé Ελληνικά русский عربى हिन्दी\n\n\n   trailing   "
)


def test_known_ids():
    assert gpt2().encode("Hello, I am a language model,") == [15496, 11, 314, 716, 257, 3303, 2746, 11]
    assert gpt2().eot == EOT == 50256


def test_round_trip_unicode():
    tok = gpt2()
    for text in [VARIED, "", " ", "\x00\x01\uffff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010ffff", "<|endoftext|> literal"]:
        assert tok.decode(tok.encode(text)) == text


def test_special_token_only_when_allowed():
    tok = gpt2()
    assert EOT not in tok.encode("a<|endoftext|>b")
    assert EOT in tok.encode("a<|endoftext|>b", allow_special=True)


def test_hf_tokenizer_same_ids():
    assert hf_tokenizer()(VARIED)["input_ids"] == gpt2().encode(VARIED)
