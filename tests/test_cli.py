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


def _readme_errors() -> dict[str, str]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("| command | refused with one line, exit 2 |")
    rows = text[start:text.index("\n\n", start)].splitlines()[2:]
    table = {}
    for row in rows:
        cmd, _, what = row.strip("| ").partition(" | ")
        table[cmd.split(" (")[0].strip("`")] = what
    return table


def test_readme_errors_table_is_what_the_commands_say(capsys):
    """README's errors table and each command's --help come from one place (cli/errors.py; the figures'
    from paper_figures/build.py), so the documented errors are the ones the code was written against."""
    import re

    from dmas_repro.cli import build_parser
    from dmas_repro.cli.errors import ERRORS
    from paper_figures.build import ERRORS as FIGURE_ERRORS

    table = _readme_errors()
    assert table.pop("make figures") == FIGURE_ERRORS
    assert table == ERRORS
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(ERRORS) - {"every command"} == set(sub.choices)  # every command has its row
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731 - help text is re-wrapped (also at hyphens)
    for name, parser in sub.choices.items():
        assert squash(ERRORS[name]) in squash(parser.format_help()), name
        assert squash(ERRORS["every command"]) in squash(parser.format_help()), name
