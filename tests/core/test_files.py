import json

import pytest

from dmas_repro.core.errors import UserError
from dmas_repro.core.files import atomic_dir, check_free_space
from dmas_repro.train.layout import MetricsWriter, read_metrics


def test_atomic_dir_commits_or_leaves_nothing(tmp_path):
    with atomic_dir(tmp_path / "ck") as d:
        (d / "a.txt").write_text("x")
    assert (tmp_path / "ck" / "a.txt").read_text() == "x"
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "ck2") as d:
            (d / "a.txt").write_text("x")
            raise RuntimeError("killed")
    assert not (tmp_path / "ck2").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_metrics_truncate_and_torn_line(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.jsonl")
    for s in range(1, 6):
        w.write("train", step=s, loss=float("nan") if s == 5 else 1.0 / s)
    w.truncate_after(3)
    w.write("train", step=4, loss=0.2)
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["kind"] == "train"


def test_free_space_check(tmp_path):
    check_free_space(tmp_path / "x", 1, "a shard")
    with pytest.raises(UserError, match="not enough disk space"):
        check_free_space(tmp_path / "x", 1 << 62, "a shard")
