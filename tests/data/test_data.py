"""prepare-data (shards, manifest, determinism, resume, errors) and the rank-strided loader."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dmas_repro.cli import main
from dmas_repro.core.errors import UserError
from dmas_repro.data import prepare as prep
from dmas_repro.data import shards
from dmas_repro.data.batches import TokenBatches, eval_batches, val_window_count
from dmas_repro.model.tokenizer import gpt2


def _corpus(tmp_path: Path, n: int = 120) -> Path:
    """A small local .jsonl corpus with documents of varied length."""
    rng = np.random.default_rng(0)
    words = "the of a language model learns from data tokens every step loss falls slowly".split()
    f = tmp_path / "corpus.jsonl"
    with open(f, "w") as fh:
        for i in range(n):
            text = f"Document {i}: " + " ".join(rng.choice(words, size=int(rng.integers(5, 120))))
            fh.write(json.dumps({"text": text}) + "\n")
    return f


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.bin"))}


def _cfg(src, **kw):
    base = dict(source=str(src), shard_tokens=1000, val_tokens=600, val_every_docs=7, chunk_docs=8)
    base.update(kw)
    return prep.PrepareConfig(**base)


def test_prepare_local_file_layout_and_determinism(tmp_path):
    src = _corpus(tmp_path)
    man = prep.prepare(_cfg(src), tmp_path / "a", progress=False)
    prep.prepare(_cfg(src), tmp_path / "b", progress=False)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")

    # layout: full shards of exactly shard_tokens, uint16 raw, sha256 in the manifest
    train = man["shards"]["train"]
    assert len(train) >= 3 and all(s["tokens"] == 1000 for s in train[:-1])
    assert man["tokens"]["val"] >= 600 and man["dtype"] == "uint16" and man["eot"] == 50256
    assert man["source"]["files"][0]["name"] == "corpus.jsonl"
    assert len(man["tokenizer_sha256"]) == 64
    shards.verify(tmp_path / "a")

    # every document starts with <|endoftext|>; val holds documents 0, 7, 14, ...
    val = shards.load_split_tokens(tmp_path / "a", "val")
    tok = gpt2()
    docs = [json.loads(line)["text"] for line in src.read_text().splitlines()]
    expect_val = np.concatenate([[50256] + tok.encode(docs[i]) for i in range(0, len(docs), 7)])
    assert np.array_equal(val, expect_val[: len(val)])
    tr = shards.open_split(tmp_path / "a", "train")
    assert tr[0] == 50256 and len(tr) == man["tokens"]["train"]
    train_docs = [d for i, d in enumerate(docs) if i % 7 or i >= 7 * man["documents"]["val"]]
    expect_train = np.concatenate([[50256] + tok.encode(d) for d in train_docs])
    assert np.array_equal(np.asarray(tr), expect_train)
    # slices across a shard boundary
    assert np.array_equal(tr[990:1010], expect_train[990:1010])


def test_prepare_interrupted_then_rerun_gives_identical_shards(tmp_path, monkeypatch):
    src = _corpus(tmp_path)
    prep.prepare(_cfg(src), tmp_path / "ref", progress=False)

    calls = {"n": 0}
    real = prep._save_progress

    def crash_after_two(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_save_progress", crash_after_two)
    monkeypatch.setattr(prep, "PROGRESS_EVERY_S", 0.0)  # a resume point after every chunk that made a shard
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(_cfg(src), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / shards.PROGRESS).is_file() and not (tmp_path / "run" / shards.MANIFEST).exists()
    with pytest.raises(UserError, match="unfinished preparation"):
        shards.read_manifest(tmp_path / "run")
    monkeypatch.setattr(prep, "_save_progress", real)
    prep.prepare(_cfg(src), tmp_path / "run", progress=False)
    assert _files(tmp_path / "run") == _files(tmp_path / "ref")
    assert not list((tmp_path / "run").glob(".progress*"))
    # the same settings again: nothing to do; other settings: refused
    prep.prepare(_cfg(src), tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="other settings"):
        prep.prepare(_cfg(src, shard_tokens=999), tmp_path / "run", progress=False)


def test_prepare_multiprocess_matches_single_process(tmp_path):
    src = _corpus(tmp_path, 60)
    prep.prepare(_cfg(src), tmp_path / "one", progress=False)
    prep.prepare(_cfg(src, num_proc=2), tmp_path / "two", progress=False)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_prepare_max_tokens_and_txt_and_bundled(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("first line doc\n\nsecond doc here\nthird\n")
    man = prep.prepare(prep.PrepareConfig(source=str(txt), val_every_docs=3, val_tokens=1), tmp_path / "t",
                       progress=False)
    assert man["documents"] == {"train": 2, "val": 1}
    man = prep.prepare(prep.PrepareConfig(source="bundled", max_tokens=5000, val_tokens=500), tmp_path / "b",
                       progress=False)
    assert man["tokens"]["train"] == 5000 and man["source"]["source"] == "bundled"
    assert {f["name"] for f in man["source"]["files"]} == {"wiki_demo.txt", "c4_demo.jsonl"}


def test_prepare_stops_cleanly_when_disk_is_full(tmp_path, monkeypatch):
    src = _corpus(tmp_path)
    real = prep.check_free_space
    calls = {"n": 0}

    def no_room(path, need, what):
        calls["n"] += 1
        if calls["n"] >= 3:  # room for two shards only
            real(path, 1 << 62, what)

    monkeypatch.setattr(prep, "check_free_space", no_room)
    with pytest.raises(UserError, match="not enough disk space for token shard"):
        prep.prepare(_cfg(src), tmp_path / "full", progress=False)
    monkeypatch.setattr(prep, "check_free_space", real)
    prep.prepare(_cfg(src), tmp_path / "full", progress=False)  # resumes after space is freed
    prep.prepare(_cfg(src), tmp_path / "ref", progress=False)
    assert _files(tmp_path / "full") == _files(tmp_path / "ref")


def test_read_errors_are_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="no prepared data"):
        shards.read_manifest(tmp_path / "nothing")
    src = _corpus(tmp_path, 40)
    d = tmp_path / "d"
    prep.prepare(_cfg(src), d, progress=False)
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    f = bad / "train_000000.bin"
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(UserError, match="wrong size or dtype"):
        shards.read_manifest(bad)
    shutil.rmtree(bad)
    shutil.copytree(d, bad)
    man = json.loads((bad / shards.MANIFEST).read_text())
    man["dtype"] = "uint32"
    (bad / shards.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(UserError, match="uint16"):
        shards.open_split(bad, "train")
    with pytest.raises(UserError, match="unknown data source"):
        prep.prepare(prep.PrepareConfig(source=str(tmp_path / "missing.txt")), tmp_path / "x")


def test_prepare_data_cli(tmp_path, capsys):
    src = _corpus(tmp_path, 30)
    out = tmp_path / "cli"
    rc = main(["prepare-data", "--source", str(src), "--out", str(out), "--shard-tokens", "500",
               "--val-tokens", "100", "--num-proc", "1", "--verify", "--no-progress"])
    assert rc == 0 and (out / shards.MANIFEST).is_file()
    assert "train tokens" in capsys.readouterr().out


class _FakeInfo:
    sha = "0123456789abcdef0123456789abcdef01234567"


def test_fineweb_edu_streaming_resumes_with_dataset_state(tmp_path, monkeypatch):
    """The hub transport is replaced by a local generator dataset; the rest runs for real."""
    import datasets
    import huggingface_hub

    docs = [f"Educational text number {i}. " * (1 + i % 17) for i in range(150)]

    def gen():
        for t in docs:
            yield {"text": t, "id": "x"}

    opened = []

    def fake_load_dataset(repo, name=None, split=None, streaming=False, revision=None, **kw):
        opened.append((repo, name, split, streaming, revision))
        return datasets.IterableDataset.from_generator(gen)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, repo, revision=None: _FakeInfo())
    cfg = prep.PrepareConfig(source="fineweb-edu", shard_tokens=800, val_tokens=500, chunk_docs=10,
                             subset="sample-10BT")
    ref = prep.prepare(cfg, tmp_path / "ref", progress=False)
    assert opened[0] == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True, _FakeInfo.sha)
    assert ref["source"]["revision"] == _FakeInfo.sha
    # val_every_docs = 1 for fineweb-edu: the first documents are the validation split (authors' shard 0)
    tok = gpt2()
    val = shards.load_split_tokens(tmp_path / "ref", "val")
    assert np.array_equal(val[: 1 + len(tok.encode(docs[0]))], [50256] + tok.encode(docs[0]))

    calls = {"n": 0}
    real = prep._save_progress

    def crash(*a, **k):
        real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep, "_save_progress", crash)
    monkeypatch.setattr(prep, "PROGRESS_EVERY_S", 0.0)  # a resume point after every new shard
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(cfg, tmp_path / "run", progress=False)
    progress = json.loads((tmp_path / "run" / shards.PROGRESS).read_text())
    assert progress["stream"]["dataset"] is not None  # the datasets library's own resumable state
    monkeypatch.setattr(prep, "_save_progress", real)
    prep.prepare(cfg, tmp_path / "run", progress=False)
    assert _files(tmp_path / "run") == _files(tmp_path / "ref")


def test_fineweb_offline_is_a_user_error(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(self, repo, revision=None):
        raise OSError("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    with pytest.raises(UserError, match="cannot resolve HuggingFaceFW/fineweb-edu"):
        prep.prepare(prep.PrepareConfig(source="fineweb-edu"), tmp_path / "fw")


# ---------------------------------------------------------------- loader
def _batches(src, **kw):
    return [src.next_batch() for _ in range(kw.get("n", 1))]


def test_loader_rank_strided_partition_and_exact_position():
    tokens = np.arange(10_000, dtype=np.uint16)
    T, mb = 8, 2
    one = TokenBatches(tokens, T, mb, grad_accum=4, shuffle=True, seed=3)
    ranks = [TokenBatches(tokens, T, mb, grad_accum=2, rank=r, world_size=2, shuffle=True, seed=3) for r in (0, 1)]
    for _ in range(3):  # three optimizer steps: the same windows per step for 1 x 4 and 2 x 2
        a = {tuple(x[i].tolist()) for x, _ in _batches(one, n=4) for i in range(mb)}
        b = {tuple(x[i].tolist()) for r in ranks for x, _ in _batches(r, n=2) for i in range(mb)}
        assert a == b and len(a) == 8
    x, y = TokenBatches(tokens, T, mb, 1).next_batch()
    assert x.shape == (2, 8) and np.array_equal(y[0, :-1], x[0, 1:])  # targets are inputs shifted by one
    # the position is one integer: a fresh loader given the state continues with the same windows
    state = one.state_dict()
    nxt = one.next_batch()
    again = TokenBatches(tokens, T, mb, grad_accum=4, shuffle=True, seed=3)
    again.load_state_dict(state)
    assert all((u == v).all() for u, v in zip(again.next_batch(), nxt))
    with pytest.raises(RuntimeError):
        one.state_dict()  # in the middle of a step
    with pytest.raises(UserError, match="windowing changed"):
        TokenBatches(tokens, 16, mb, grad_accum=4, shuffle=True, seed=3).load_state_dict(state)


def test_loader_epochs_visit_every_window_once():
    tokens = np.arange(1 + 8 * 12, dtype=np.uint16)  # exactly 12 windows of 8
    src = TokenBatches(tokens, 8, 3, grad_accum=1, shuffle=True, seed=0)
    firsts = [int(x[i, 0]) // 8 for _ in range(8) for x, _ in [src.next_batch()] for i in range(3)]
    assert sorted(firsts[:12]) == list(range(12)) and sorted(firsts[12:]) == list(range(12))
    assert firsts[:12] != firsts[12:]  # a new permutation per epoch

def test_validation_set_fixed_in_tokens_for_any_micro_batch_and_world_size():
    tokens = np.arange(1 + 8 * 12, dtype=np.uint16)  # 12 windows of 8
    assert val_window_count(tokens, 8, 50) == 6  # the first 50 tokens: 6 whole windows
    assert val_window_count(tokens, 8, 10_000) == 12  # capped at the split's windows
    with pytest.raises(UserError, match="shorter than one window of seq_len 8"):
        val_window_count(tokens, 8, 7)
    for micro in (1, 2, 4, 5):
        for world in (1, 2, 3, 4):
            shares = [list(eval_batches(tokens, 8, 6, micro, rank=r, world_size=world)) for r in range(world)]
            assert len({len(s) for s in shares}) == 1  # every rank runs the same number of forwards
            counted = sorted(int(x[i, 0]) // 8 for s in shares for x, _, c in s if c for i in range(x.shape[0]))
            assert counted == [0, 1, 2, 3, 4, 5], (micro, world)  # each window of the set exactly once
            assert all(np.array_equal(y[:, :-1], x[:, 1:]) for s in shares for x, y, _ in s)
    # 3 micro-batches of 2 on 2 ranks: rank 1 gets micro-batch 1, then micro-batch 0 again, not counted
    r1 = list(eval_batches(tokens, 8, 6, 2, rank=1, world_size=2))
    assert [(int(x[0, 0]) // 8, c) for x, _, c in r1] == [(2, True), (0, False)]


@pytest.mark.parametrize("num_proc", [1, 2])
def test_non_utf8_text_ends_in_one_line_naming_the_file(tmp_path, capsys, num_proc):
    """A binary or non-UTF-8 .txt / .jsonl: one line that names the file, exit 2, never a UnicodeDecodeError
    (with worker processes the documents are read by the pool's feeder thread)."""
    good = "a sentence of plain text that tokenizes fine\n" * 40
    cases = {"latin1.txt": (good + "caf\xe9 au lait\n").encode("latin-1"),
             "binary.txt": bytes(range(256)) * 8,
             "records.jsonl": json.dumps({"text": "ok"}).encode() + b"\n" + b'{"text": "\xff\xfe"}\n'}
    for name, data in cases.items():
        src = tmp_path / name
        src.write_bytes(data)
        out = tmp_path / f"out-{name}"
        rc = main(["prepare-data", "--source", str(src), "--out", str(out), "--num-proc", str(num_proc),
                   "--shard-tokens", "50", "--val-tokens", "10", "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert f"{src}: not UTF-8 text" in err[0] and "Traceback" not in err[0]
    # a JSON value that is not text is named too
    src = tmp_path / "numbers.jsonl"
    src.write_text('{"text": 5}\n')
    with pytest.raises(UserError, match=r"numbers.jsonl:1: field 'text' is a int"):
        prep.prepare(_cfg(src, num_proc=num_proc), tmp_path / "n", progress=False)
