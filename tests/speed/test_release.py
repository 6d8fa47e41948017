"""bench release (a random checkpoint laid out like a release, each command measured) and bench prepare
(prepare-data against tiktoken alone), on tiny sizes: the files, the fields, the markdown."""

import json

from dmas_repro import cli
from dmas_repro.model import hf
from dmas_repro.model.transformer import preset
from dmas_repro.speed import release


def test_release_config_is_the_released_one_at_the_paper_size():
    cfg = release.release_config(preset("paper"))
    assert cfg == release.RELEASE_CONFIG
    assert len(json.dumps(cfg, indent=2, sort_keys=True) + "\n") == 655  # the listed size of the released file
    assert hf.config_from_hf_dict(cfg).to_dict() == preset("paper").to_dict()


def test_bench_release_builds_and_measures_every_command(tmp_path, capsys):
    out = tmp_path / "release.json"
    rc = cli.main(["bench", "release", "--preset", "tiny", "--model", "n_layer=1", "--model", "context_length=64",
                   "--work", str(tmp_path / "work"), "--limit", "2", "--val-tokens", "256",
                   "--probe-max-new-tokens", "2", "--chat-max-new-tokens", "2", "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0, {k: v["stderr_tail"][-500:] for k, v in res["commands"].items() if v["rc"]}
    src = tmp_path / "work" / "release"
    written = json.loads((src / "config.json").read_text())
    assert written["transformers_version"] == "4.44.2" and written["bos_token_id"] == 1
    assert written["num_hidden_layers"] == 1 and written["vocab_size"] == 50257
    assert {"model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"} <= set(res["files"])
    back = hf.from_hf(src, pad_vocab=False)  # loadable, our architecture, seeded N(0, 0.02) weights
    assert abs(float(back.layers[0].mlp.w_up.weight.detach().std()) - 0.02) < 0.002
    assert set(res["commands"]) == set(release.COMMANDS)
    for name, r in res["commands"].items():
        assert r["rc"] == 0 and r["wall_s"] > 0 and r["peak_rss_bytes"] > 0 and r["peak_over_weights"] > 0, name
    units = res["commands"]["eval-all"]["units"]
    assert {"load", "hellaswag_dev", "val_loss", "probes"} <= set(units["seconds"])
    assert res["weights_bytes"]["float32"] == 4 * res["params"]
    md = capsys.readouterr().out
    assert "| `dmas-repro import-hf release --out imported` |" in md and "peak / weights" in md
    capsys.readouterr()
    assert cli.main(["bench", "report", str(out)]) == 0
    assert "Released scale" in capsys.readouterr().out


def test_bench_prepare_against_tiktoken(tmp_path, capsys):
    out = tmp_path / "prepare.json"
    assert cli.main(["bench", "prepare", "--tokens", "60000", "--work", str(tmp_path / "w"), "--num-proc", "2",
                     "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["built"]["tokens_with_eot"] >= 60000
    assert res["prepare"]["tokens"] == res["built"]["tokens_with_eot"]  # every document, each with its EOT
    assert res["tiktoken_before"]["tokens"] == res["prepare"]["tokens"] - res["documents"]
    assert res["ratio"] > 0 and res["cpu_ratio"] > 0
    capsys.readouterr()
    assert cli.main(["bench", "report", str(out)]) == 0
    assert "prepare-data against tiktoken alone" in capsys.readouterr().out


def test_bench_eval_compare_runs_eval_all_next_to_lm_eval(tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert cli.main(["bench", "eval", "--preset", "tiny", "--model", "n_layer=1", "--model", "context_length=64",
                     "--parts", "compare", "--hellaswag-limit", "3", "--compare-rounds", "1",
                     "--compare-batch-size", "4", "--val-tokens", "256", "--probe-max-new-tokens", "2",
                     "--json", str(out)]) == 0
    c = json.loads(out.read_text())["compare"]
    (r,) = c["rounds"]
    assert c["same_numbers"] and r["lm_eval_s"] > 0 and r["benchmark_unit_s"] > 0
    assert {"fetch", "load", "lm_eval_setup", "hellaswag_dev", "probes"} <= set(r["phases_s"])
    assert c["ratio_unit_vs_lm_eval"] == c["benchmark_unit_s"] / c["lm_eval_s"]
    capsys.readouterr()
    assert cli.main(["bench", "report", str(out)]) == 0
    assert "benchmark unit / lm-eval alone" in capsys.readouterr().out
