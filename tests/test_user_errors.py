"""What a user can cause (issue #15): nothing the command did not create is deleted or hidden, no
pickle from a run directory is ever executed, and each case below ends in one `error:` line and
exit status 2 with finished work kept."""

import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from micro import micro

from dmas_repro.cli import main
from dmas_repro.core.errors import UserError
from dmas_repro.model import hf
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.transformer import ModelConfig, Transformer
from dmas_repro.train import checkpointer as tc
from dmas_repro.train import layout
from dmas_repro.train.layout import read_metrics

ROOT = Path(__file__).resolve().parents[1]
# The one-layer member of the tiny family (tests/micro.py), checkpointing every 2 steps.
MICRO = micro(val_tokens=128, ckpt_every=2, keep_last=2)


@pytest.fixture(scope="session")
def data(tiny_data) -> Path:
    return tiny_data


def _train(out: Path, data: Path, *extra: str) -> int:
    flags = [x for x in extra if x.startswith("--")]
    overrides = [x for x in extra if not x.startswith("--")]
    return main(["-q", "train", "--stages", "pretrain", "--out", str(out), *flags, *MICRO, f"data_dir={data}",
                 *overrides])


@pytest.fixture(scope="module")
def run4(data, tmp_path_factory) -> Path:
    """A micro run stopped at step 4 (checkpoints 2 and 4, the new format)."""
    out = tmp_path_factory.mktemp("run4") / "run"
    assert _train(out, data, "max_steps=4") == 0
    return out


def _one_error(err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and "error:" in lines[0], err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r["kind"] == "train"}


def _micro_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(n_layer=1, dim=32, n_head=2, n_kv_head=1, ffn_dim=64, context_length=32))


# ---------------------------------------------------------------- export-hf never deletes what it did not write
def test_export_hf_keeps_the_users_files(tmp_path, capsys, monkeypatch):
    ck = tmp_path / "ck"
    ck.mkdir()
    checkpoint.save_model_files(_micro_model(), ck)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    for out, extra, said in ((mine, [], "not empty"), (mine, ["--overwrite"], "did not write"),
                             (afile, [], "is a file"), (afile, ["--overwrite"], "is a file")):
        assert main(["export-hf", "--checkpoint", str(ck), "--out", str(out), *extra]) == 2
        _one_error(capsys.readouterr().err, said, f"--out {out}")
    assert (mine / "notes.txt").read_text() == "mine" and afile.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "ck", "mine"]  # nothing hidden
    monkeypatch.chdir(mine)
    assert main(["export-hf", "--checkpoint", str(ck), "--out", "."]) == 2
    _one_error(capsys.readouterr().err, "current directory")
    monkeypatch.chdir(tmp_path)
    # a new directory, then again: refused; with --overwrite the earlier export is replaced as a whole
    assert main(["export-hf", "--checkpoint", str(ck), "--out", "hf"]) == 0
    assert hf.is_export_dir(tmp_path / "hf") and not hf.is_export_dir(mine)
    first = (tmp_path / "hf" / "model.safetensors").stat().st_ino
    assert main(["export-hf", "--checkpoint", str(ck), "--out", "hf"]) == 2
    _one_error(capsys.readouterr().err, "--overwrite")
    assert main(["export-hf", "--checkpoint", str(ck), "--out", "hf", "--overwrite", "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").stat().st_ino != first
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    (tmp_path / "hf" / "README.md").write_text("my notes on this export")
    assert main(["export-hf", "--checkpoint", str(ck), "--out", "hf", "--overwrite"]) == 2
    _one_error(capsys.readouterr().err, "README.md")
    assert (tmp_path / "hf" / "README.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_export_hf_takes_a_run_directory_and_chat_names_a_missing_path(run4, tmp_path, capsys, monkeypatch):
    assert main(["export-hf", "--checkpoint", str(run4), "--out", str(tmp_path / "hf")]) == 0
    assert "step_00000004" in capsys.readouterr().out  # the newest checkpoint
    a = hf.from_hf(tmp_path / "hf").state_dict()
    b = checkpoint.load_model(layout.newest_checkpoint(run4)).state_dict()
    assert torch.equal(a["layers.0.attn.wq.weight"], b["layers.0.attn.wq.weight"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for cmd in (["chat", "--checkpoint", "runs/tiny", "--prompt", "hi"],
                ["export-hf", "--checkpoint", "runs/tiny", "--out", "x"],
                ["sft", "--base", "runs/tiny", "--out", "x"]):
        assert main(cmd) == 2
        _one_error(capsys.readouterr().err, "runs/tiny: no such directory")
    assert main(["chat", "--checkpoint", "nobody/nothing", "--prompt", "hi"]) == 2  # a hub id, offline
    _one_error(capsys.readouterr().err, "no such local directory", "hub id")
    assert not (tmp_path / "x").exists()


def test_a_run_directory_where_a_model_directory_is_needed(run4, capsys):
    with pytest.raises(UserError, match="training run directory.*checkpoints/step_"):
        checkpoint.load_any(run4)
    assert main(["info", "--checkpoint", str(run4), "--json"]) == 0  # info takes it: its newest checkpoint
    assert str(layout.newest_checkpoint(run4)) in capsys.readouterr().out


@pytest.mark.parametrize("args, said", [
    (["--prompt", "hi", "--top-p", "0", "--temperature", "1"], "--top-p 0.0: must be in (0, 1]"),
    (["--prompt", "hi", "--top-p", "1.5", "--temperature", "1"], "--top-p 1.5"),
    (["--prompt", "hi", "--temperature", "-1"], "--temperature -1.0"),
    (["--prompt", "hi", "--top-k", "0", "--temperature", "1"], "--top-k 0"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "   "], "--prompt is empty"),
])
def test_chat_refuses_settings_that_cannot_work(run4, capsys, args, said):
    assert main(["chat", "--checkpoint", str(run4), *args]) == 2
    _one_error(capsys.readouterr().err, said)


# ---------------------------------------------------------------- --out naming a file
def test_out_naming_a_file_is_refused_before_any_work(data, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("mine")
    for cmd in (["train", "--out", str(f), *MICRO, f"data_dir={data}"],
                ["sft", "--base", str(tmp_path), "--out", str(f)],
                ["eval-all-checkpoints", "--checkpoints", str(tmp_path), "--suite", "offline", "--out", str(f)],
                ["prepare-data", "--source", "bundled", "--out", str(f)],
                ["prepare-data", "--source", "bundled", "--out", str(f / "sub")],
                ["import-hf", str(tmp_path), "--out", str(f)],
                ["ablate", "resume", "--out", str(f)]):
        assert main(cmd) == 2, cmd
        _one_error(capsys.readouterr().err, str(f), "a file")
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_unknown_data_source_creates_nothing(tmp_path, capsys):
    out = tmp_path / "d1"
    assert main(["prepare-data", "--source", "nosuch", "--out", str(out)]) == 2
    _one_error(capsys.readouterr().err, "unknown data source 'nosuch'")
    assert not out.exists()


# ---------------------------------------------------------------- no pickle from a run directory
class _Payload:
    """Unpickling this writes the marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _legacy(ckpt: Path) -> None:
    """Rewrite a checkpoint's optimizer and RNG state as the pickled files of the old format."""
    torch.save(tc.read_optimizer_state(ckpt), ckpt / layout.LEGACY_OPTIMIZER)
    torch.save(tc.read_rng_states(ckpt), ckpt / layout.LEGACY_RNG)
    (ckpt / layout.OPTIMIZER).unlink()
    (ckpt / layout.RNG).unlink()


def test_checkpoints_hold_no_pickle(run4):
    ck = layout.newest_checkpoint(run4)
    names = sorted(p.name for p in ck.iterdir())
    assert layout.OPTIMIZER in names and layout.RNG in names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".bin", ".pkl"))]
    for p in ck.iterdir():  # a pickle starts with the PROTO opcode 0x80; safetensors with a header length
        assert not p.read_bytes()[:1] == b"\x80", p
    osd = tc.read_optimizer_state(ck)
    assert osd["param_groups"][0]["betas"] == [0.9, 0.95]
    assert sorted(osd["state"]) == sorted(checkpoint.load_model(ck).state_dict())  # by parameter name
    assert all(isinstance(v["exp_avg"], torch.Tensor) for v in osd["state"].values())
    rng = tc.read_rng_states(ck)
    assert len(rng) == 1 and rng[0]["torch"].dtype == torch.uint8 and len(rng[0]["python"][1]) == 625


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_and_rng_state_round_trip_exactly(tmp_path, fused):
    import random

    import numpy as np

    from dmas_repro.train import optim

    m = _micro_model()
    opt = optim.build_adamw(m, 1e-3, 0.1, (0.9, 0.95), 1e-8, fused)
    x = torch.randint(0, 50257, (2, 8))
    m(x, x).backward()
    opt.step()
    tc.save_optimizer_state(tc.optimizer_state_by_name(m, opt), tmp_path / layout.OPTIMIZER)
    again = optim.build_adamw(m, 1e-3, 0.1, (0.9, 0.95), 1e-8, fused)
    tc.load_optimizer(m, m, again, tc.read_optimizer_state(tmp_path), "ddp", "test")
    a, b = opt.state_dict(), again.state_dict()
    assert a["param_groups"] == b["param_groups"] and isinstance(b["param_groups"][0]["betas"], tuple)
    for k in a["state"]:
        for key, v in a["state"][k].items():
            assert torch.equal(v, b["state"][k][key]) and v.dtype == b["state"][k][key].dtype
    random.gauss(0, 1)  # a cached gaussian in the python state, too
    np.random.standard_normal()
    state = tc.rng_state()
    tc.save_rng_states([state, state], tmp_path / layout.RNG)
    want = (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    back = tc.read_rng_states(tmp_path)
    assert len(back) == 2
    tc.set_rng_state(back[1])
    assert (random.random(), random.gauss(0, 1), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == want


def test_a_planted_pickle_never_runs_on_resume(run4, data, tmp_path, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    # (a) an old-format checkpoint whose optimizer.pt / rng.pt are crafted: refused, one line
    for name in (layout.LEGACY_OPTIMIZER, layout.LEGACY_RNG):
        out = tmp_path / f"evil-{name}"
        shutil.copytree(run4, out)
        ck = layout.newest_checkpoint(out)
        _legacy(ck)
        with open(ck / name, "wb") as f:
            pickle.dump(_Payload(marker), f, protocol=2)
        assert _train(out, data, "--resume", "max_steps=6") == 2
        _one_error(capsys.readouterr().err, str(ck / name), "refused", "could run code")
        assert not marker.exists()
        assert max(_losses(out)) == 4  # nothing trained, nothing lost
    # (b) crafted .pt files beside a new-format checkpoint are never opened
    out = tmp_path / "beside"
    shutil.copytree(run4, out)
    ck = layout.newest_checkpoint(out)
    for name in (layout.LEGACY_OPTIMIZER, layout.LEGACY_RNG):
        with open(ck / name, "wb") as f:
            pickle.dump(_Payload(marker), f)
    assert _train(out, data, "--resume", "max_steps=6") == 0
    assert not marker.exists()


def test_old_format_checkpoints_resume_bit_identically(run4, data, tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    shutil.copytree(run4, new)
    shutil.copytree(run4, old)
    _legacy(layout.newest_checkpoint(old))
    assert _train(new, data, "--resume", "max_steps=6") == 0
    assert _train(old, data, "--resume", "max_steps=6") == 0
    assert _losses(old) == _losses(new) and max(_losses(new)) == 6
    a = checkpoint.load_model(layout.newest_checkpoint(new)).state_dict()
    b = checkpoint.load_model(layout.newest_checkpoint(old)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (layout.newest_checkpoint(old) / layout.OPTIMIZER).is_file()  # written in the new format


# ---------------------------------------------------------------- no space left
def _enospc_on(fragment: str):
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file

    def save_file(tensors, filename, *a, **k):
        if fragment in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, *a, **k)

    return save_file


def test_no_space_while_training_keeps_the_last_checkpoint(data, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    out = tmp_path / "run"
    monkeypatch.setattr(safetensors.torch, "save_file", _enospc_on(".step_00000004.tmp-"))
    assert _train(out, data, "max_steps=6") == 2
    _one_error(capsys.readouterr().err, "no space left on the device", "step_00000004", "(newest: step_00000002)",
               "--resume")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]  # no partial copy
    monkeypatch.undo()
    assert _train(out, data, "--resume", "max_steps=6") == 0
    assert sorted(_losses(out)) == [1, 2, 3, 4, 5, 6]


def test_no_space_while_exporting_keeps_the_earlier_export(tmp_path, capsys, monkeypatch):
    import errno

    from dmas_repro.model import hf, safetensors_io

    real = safetensors_io.write_safetensors

    def write_safetensors(path, *a, **k):  # the export's writer, as if the disk filled up
        if ".hf.tmp-" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    ck = tmp_path / "ck"
    ck.mkdir()
    checkpoint.save_model_files(_micro_model(), ck)
    assert main(["export-hf", "--checkpoint", str(ck), "--out", str(tmp_path / "hf")]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    monkeypatch.setattr(hf, "write_safetensors", write_safetensors)
    assert main(["export-hf", "--checkpoint", str(ck), "--out", str(tmp_path / "hf"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    _one_error(err, "no space left on the device", "nothing was replaced")
    assert "not usable" not in err  # the disk, not the checkpoint
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "hf"]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                        "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"], capture_output=True)
    return r.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and a tmpfs mount in a user namespace")
def test_no_space_on_a_real_small_disk(data, tmp_path):
    """The same on a 60 MB tmpfs (a micro checkpoint is about 39 MB): a real ENOSPC from safetensors."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full.sh"
    train = [sys.executable, "-m", "dmas_repro", "-q", "train", "--stages", "pretrain", "--out", f"{disk}/run",
             *MICRO, f"data_dir={data}", "max_steps=6"]
    script.write_text(
        f"mount -t tmpfs -o size=60m tmpfs {disk} || exit 99\n"
        f"{' '.join(train)} 2> {tmp_path}/train.err; echo $? > {tmp_path}/train.rc\n"
        f"ls {disk}/run/checkpoints > {tmp_path}/ls.txt\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", str(script)], env=env, timeout=300)
    assert (tmp_path / "train.rc").read_text().strip() == "2", (tmp_path / "train.err").read_text()
    _one_error((tmp_path / "train.err").read_text(), "no space left on the device", "step_00000002")
    assert (tmp_path / "ls.txt").read_text().split() == ["step_00000002"]


# ---------------------------------------------------------------- reruns and permissions
def test_a_rerun_that_reaches_the_end_again_replaces_only_its_own_export(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, data, "export_hf=true", "max_steps=8") == 0
    assert hf.is_export_dir(out / "hf")
    assert _train(out, data, "export_hf=true", "--resume") == 0  # at the end already: exported again
    assert hf.is_export_dir(out / "hf")
    (out / "hf" / "notes.txt").write_text("mine")
    assert _train(out, data, "export_hf=true", "--resume") == 2
    _one_error(capsys.readouterr().err, "notes.txt", "did not write")
    assert (out / "hf" / "notes.txt").read_text() == "mine"


def test_a_run_is_written_with_the_users_umask(data, tmp_path):
    old = os.umask(0o027)
    try:
        assert _train(tmp_path / "run", data, "max_steps=2", "export_hf=true", "total_steps=2") == 0
    finally:
        os.umask(old)
    paths = [tmp_path / "run", *(tmp_path / "run").rglob("*")]
    for p in paths:
        want = 0o750 if p.is_dir() else 0o640
        assert stat.S_IMODE(p.stat().st_mode) == want, p
    assert {p.name for p in paths} >= {"step_00000002", "hf", layout.OPTIMIZER, "model.safetensors"}


# ---------------------------------------------------------------- figures
def test_figures_name_an_unreadable_input(tmp_path, capsys):
    from paper_figures.build import main as figures

    for src in ("results", "runs"):
        shutil.copytree(ROOT / "examples" / src, tmp_path / src)
    only = ["--only", "training_curves", "scores_table", "qualitative_outputs"]
    assert figures(["--results", str(tmp_path / "nonexistent"), "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys.readouterr().err, "--results", "no such directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert figures(["--results", str(empty), "--runs", str(empty), "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys.readouterr().err, "no inputs found")
    assert not (tmp_path / "o").exists()
    csv = tmp_path / "results" / "offline" / "results.csv"
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    good_csv, good_metrics = csv.read_bytes(), metrics.read_bytes()
    cases = [
        (csv, b"\x89PNG\r\n\x1a\n\x00\x00binary", "not UTF-8"),
        (csv, b"checkpoint,step\nx,1\n", "no column metric, task, value"),
        (csv, good_csv.replace(b"hellaswag_dev,acc_norm,0.", b"hellaswag_dev,acc_norm,x0.", 1), "value is 'x0."),
        (metrics, b"\x00\x01\xff\xfe garbage\n", "not UTF-8"),
        (metrics, b'{"kind": "train", "step": 1, "loss": 2.0}\n{oops\n{"kind": "train", "step": 2}\n', "line 2"),
        (metrics, b'{"kind": "train", "step": 1, "loss": "abc"}\n', "loss is 'abc'"),
    ]
    for f, content, said in cases:
        csv.write_bytes(good_csv)
        metrics.write_bytes(good_metrics)
        f.write_bytes(content)
        out = tmp_path / "out"
        rc = figures(["--results", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"), "--out", str(out),
                      *only])
        cap = capsys.readouterr()
        assert rc == 2, (said, cap.out, cap.err)
        _one_error(cap.err, str(f), said)
        report = json.loads((out / "build.json").read_text())
        assert "qualitative_outputs" in report["built"]  # the others still build
        assert (out / "qualitative_outputs.md").is_file()
        failed = "training_curves" if f == metrics else "scores_table"
        assert failed in report["failed"] and str(f) in report["failed"][failed]


# ---------------------------------------------------------------- train --plan
def test_plan_states_each_gpus_peak():
    from dmas_repro.core.runtime import GPU_PEAK_BF16
    from dmas_repro.train.config import load_config
    from dmas_repro.train.plan import PLAN_GPUS, format_plan, plan

    text = format_plan(plan(load_config("paper")), "paper")
    lines = [ln for ln in text.splitlines() if "GPU-hours" in ln]
    assert len(lines) == len(PLAN_GPUS)
    for g, ln in zip(PLAN_GPUS, lines):
        assert ln.endswith(f"(peak {GPU_PEAK_BF16[g] / 1e12:.0f} TFLOP/s bf16)"), ln
