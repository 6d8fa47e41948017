import json
import subprocess
import sys

import torch

from dmas_repro.cli import main
from dmas_repro.model import hf
from dmas_repro.model import weights as checkpoint
from dmas_repro.model.transformer import build


def test_info_json_paper(capsys):
    assert main(["info", "--preset", "paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 1_716_144_128


def test_info_on_hf_dir_reports_sliced_params(tmp_path, capsys):
    m = build("tiny")
    out = hf.save_hf(m, tmp_path / "hf")
    assert main(["info", "--checkpoint", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == m.num_params() - 2 * 47 * 128
    assert info["size_on_disk_bytes"] > 0


def test_export_import_cli_round_trip(tmp_path):
    torch.manual_seed(0)
    m = build("tiny")
    (tmp_path / "ck").mkdir()
    checkpoint.save_model_files(m, tmp_path / "ck")
    assert main(["export-hf", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "hf")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = checkpoint.load_model(tmp_path / "back")
    a, b = hf.hf_state_dict(m), hf.hf_state_dict(back)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_errors_are_one_line_no_traceback(tmp_path):
    for args in (
        ["info", "--checkpoint", str(tmp_path / "nope")],
        ["info", "--preset", "huge"],
        ["export-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")],
        ["import-hf", "not-a-dir-or-id", "--out", str(tmp_path / "o")],
        ["import-hf", "McGill-DMaS/DMaS-LLaMa-Lite-step-5.1k", "--out", str(tmp_path / "o"),
         "--cache-dir", str(tmp_path / "cache")],
    ):
        r = subprocess.run([sys.executable, "-m", "dmas_repro", *args], capture_output=True, text=True,
                           env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr, r.stderr
        lines = [ln for ln in r.stderr.strip().splitlines() if "error" in ln]
        assert len(lines) == 1, r.stderr
