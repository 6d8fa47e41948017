import errno
import json
import os
import stat

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


# ---------------------------------------------------------------- never replace what the caller did not write
def test_atomic_dir_refuses_what_exists_unless_it_is_the_callers_own(tmp_path):
    from dmas_repro.core.files import atomic_dir

    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*notes.txt.*nothing was changed"):
        with atomic_dir(user):
            raise AssertionError("the body must not run")
    with pytest.raises(UserError, match="did not write"):
        with atomic_dir(user, replace=lambda p: (p / "ours.txt").is_file()):
            raise AssertionError("the body must not run")
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        with atomic_dir(afile):
            pass
    with pytest.raises(UserError, match="lies below"):
        with atomic_dir(afile / "sub"):
            pass
    assert (user / "notes.txt").read_text() == "mine" and afile.read_text() == "mine"
    # an empty directory is taken; the caller's own output is replaced as a whole
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as d:
        (d / "ours.txt").write_text("1")
    with atomic_dir(tmp_path / "empty", replace=lambda p: (p / "ours.txt").is_file()) as d:
        (d / "ours.txt").write_text("2")
        (d / "more.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["more.txt", "ours.txt"]
    assert (tmp_path / "empty" / "ours.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "user"]  # no .tmp / .old leftovers


def test_atomic_dir_refuses_the_current_directory(tmp_path, monkeypatch):
    from dmas_repro.core.files import atomic_dir

    monkeypatch.chdir(tmp_path)
    for target in (".", str(tmp_path), ".."):
        with pytest.raises(UserError, match="current directory"):
            with atomic_dir(target):
                pass


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_users_umask(tmp_path, umask):
    import torch
    from safetensors.torch import save_file

    from dmas_repro.core.files import atomic_dir, atomic_write_text

    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "d") as d:
            save_file({"x": torch.zeros(2)}, str(d / "w.safetensors"))  # safetensors makes it 0600
            (d / "sub").mkdir()
            (d / "sub" / "a.json").write_text("{}")
        atomic_write_text(tmp_path / "results.csv", "a,b\n")  # mkstemp makes it 0600
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "d") == mode(tmp_path / "d" / "sub") == 0o777 & ~umask
    assert mode(tmp_path / "d" / "w.safetensors") == mode(tmp_path / "d" / "sub" / "a.json") == 0o666 & ~umask
    assert mode(tmp_path / "results.csv") == 0o666 & ~umask
    os.chmod(tmp_path / "results.csv", 0o600)  # a rewrite keeps the mode the user gave the file
    atomic_write_text(tmp_path / "results.csv", "a,b\n1,2\n")
    assert mode(tmp_path / "results.csv") == 0o600


def _no_space_os(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_space_safetensors(*a, **k):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("writer", [_no_space_os, _no_space_safetensors])
def test_a_full_disk_is_one_error_and_replaces_nothing(tmp_path, writer):
    from dmas_repro.core.files import DiskFull, atomic_dir, atomic_write_text

    with atomic_dir(tmp_path / "out") as d:
        (d / "old.txt").write_text("old")
    with pytest.raises(DiskFull, match="no space left on the device writing .*out.*nothing was replaced"):
        with atomic_dir(tmp_path / "out", replace=lambda p: True) as d:
            (d / "new.txt").write_text("new")
            writer()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the partial copy is removed
    atomic_write_text(tmp_path / "f.txt", "old")
    import dmas_repro.core.files as files

    real = files.os.fsync
    files.os.fsync = writer
    try:
        with pytest.raises(DiskFull):
            atomic_write_text(tmp_path / "f.txt", "new")
    finally:
        files.os.fsync = real
    assert (tmp_path / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "out"]
