"""The analysis layer recovers answers planted in synthetic data."""

import json

import numpy as np
import pandas as pd
import pytest
from analysis_synth import (
    INSTRUCT_DELTA,
    LOSSES,
    MC2_ITEMS,
    MC2_MID,
    MC2_TASK,
    N_ITEMS,
    RESUME_STEP,
    SPIKE,
    TASKS,
    planted_mc2,
    sigmoid,
    train_rows,
    write_workspace,
)

import analysis
from analysis import ablation, items, probes, scores, training, transitions


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return write_workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def results(ws):
    return analysis.load_results(ws / "results" / "offline")


@pytest.fixture(scope="module")
def item_df(ws):
    return analysis.load_items(ws / "results" / "offline")


# ---------------------------------------------------------------- loaders
def test_loaders_and_discovery(ws, tmp_path, monkeypatch):
    (ws / "runs" / "tiny" / "metrics.jsonl").open("a").write('{"kind": "train", "st')  # torn last line
    m = analysis.load_runs(ws / "runs")
    assert set(m["run"]) == {"tiny", "tiny/sft"}  # ablation runs are not training runs
    assert analysis.io.metrics_kind(m[m["run"] == "tiny"], "train")["step"].is_monotonic_increasing
    inp = analysis.discover(ws)
    assert len(inp.results) == 1 and len(inp.ablations) == 2 and len(inp.weights) == 1
    assert "results" in inp.source
    # an empty directory falls back to the shipped examples
    empty = analysis.discover(tmp_path)
    assert "example" in empty.source
    assert analysis.io.series_of("McGill-DMaS/DMaS-LLaMa-Lite-step-43.5k-instruct") == "DMaS-LLaMa-Lite"
    assert analysis.io.series_of("step-2.7k") == "DMaS-LLaMa-Lite"
    assert analysis.io.series_of("tiny-sft-hf") == "tiny" and analysis.io.kind_of("tiny-sft-hf") == "instruct"
    assert analysis.io.series_of("runs/tiny/checkpoints/step_00000120") == "tiny"
    assert analysis.io.normalise_metric("acc_norm,none") == "acc_norm"
    with pytest.raises(FileNotFoundError, match="no results"):
        analysis.load_results(tmp_path)


# ---------------------------------------------------------------- scores and correlations
def test_scores_against_loss_and_correlation(results):
    sc = scores.scores(results)
    base = sc[(sc["kind"] == "base") & (sc["series"] == "tiny")]
    assert set(base["task"]) == set(TASKS) | {MC2_TASK}
    assert np.allclose(base[base["task"] == "easy_task"]["val_loss"], LOSSES)
    corr = scores.loss_correlations(base)
    for _, r in corr.iterrows():  # planted monotone relation: accuracy falls as loss rises
        assert r["spearman_rho"] < -0.9 and r["spearman_p"] < 0.01 and r["pearson_r"] < -0.8
    # an unrelated score is not significant
    rng = np.random.default_rng(1)
    noise = pd.DataFrame({"task": "x", "val_loss": LOSSES, "value": rng.random(len(LOSSES))})
    assert scores.loss_correlations(noise)["spearman_p"].iloc[0] > 0.05
    wide = scores.score_matrix(results)
    assert list(wide["tokens"]) == sorted(wide["tokens"])
    assert "easy_task (acc_norm)" in wide.columns


def test_base_vs_instruct_delta(results):
    d = scores.base_vs_instruct(results)
    d = d[d["metric"] == "acc_norm"]
    assert set(d["task"]) == set(TASKS)
    assert np.allclose(d["delta"], INSTRUCT_DELTA)
    assert (d["base"] == "tiny-step_00001000").all()


def test_rerun_overlay_at_matched_tokens():
    ref = pd.DataFrame({"task": "t", "tokens": [1e9, 2e9, 4e9, 8e9], "value": [0.3, 0.4, 0.5, 0.6]})
    tok = np.geomspace(5e8, 1e10, 9)
    rerun = pd.DataFrame({"task": "t", "tokens": tok, "value": 0.1 * np.log2(tok / 1e9) + 0.35})
    m = scores.match_at_tokens(rerun, ref)
    assert len(m) == 4
    assert np.allclose(m["difference"], 0.05)  # planted: rerun is 0.05 above the reference everywhere
    frac = scores.match_at_tokens(rerun, ref, by="fraction")
    assert len(frac) and frac["fraction"].max() <= 1.0


# ---------------------------------------------------------------- transitions
def test_sigmoid_fit_recovers_planted_midpoint():
    loss = np.linspace(7, 3, 10)
    acc = sigmoid(loss, 0.25, 0.8, 4.6, 3.0)
    fit = transitions.fit_sigmoid(loss, acc, 0.25)
    assert fit.midpoint == pytest.approx(4.6, abs=1e-3)
    assert fit.slope == pytest.approx(3.0, rel=1e-2)
    assert fit.ceiling == pytest.approx(0.8, abs=1e-3)
    assert fit.loss_at(fit.floor + (fit.ceiling - fit.floor) / 2) == pytest.approx(4.6, abs=1e-3)
    rng = np.random.default_rng(0)
    noisy = transitions.fit_sigmoid(loss, acc + rng.normal(0, 0.01, 10), 0.25)
    assert noisy.midpoint == pytest.approx(4.6, abs=0.15)


def test_bootstrap_transition_recovers_planted_transition():
    rng = np.random.default_rng(0)
    chance, ceil, mid, slope = 0.25, 0.85, 5.5, 3.0
    p = sigmoid(LOSSES, chance, ceil, mid, slope)
    m = (rng.random((2000, len(LOSSES))) < p).astype(int)
    r = transitions.bootstrap_transition(m, LOSSES, chance, n_boot=100, seed=0)
    margin = transitions.significance_margin(chance, 2000)
    true = transitions.SigmoidFit(chance, ceil, mid, slope, 0, 10).loss_at(chance + margin)
    assert abs(r["midpoint"] - mid) < 0.1
    assert r["midpoint_low"] - 0.05 <= mid <= r["midpoint_high"] + 0.05
    assert 0 < r["midpoint_high"] - r["midpoint_low"] < 0.5
    assert r["transition_low"] - 0.05 <= true <= r["transition_high"] + 0.05
    assert abs(r["transition_loss"] - true) < 0.3
    # discrete transition: the first checkpoint whose accuracy is significantly above chance and stays so
    k = r["first_above_chance_index"]
    assert k >= 0 and LOSSES[k] >= true - 0.5
    assert p[k - 1] - chance < 0.05 if k > 0 else True
    # a task that stays at chance has no transition
    flat = (rng.random((500, len(LOSSES))) < chance).astype(int)
    r0 = transitions.bootstrap_transition(flat, LOSSES, chance, n_boot=30, seed=0)
    assert r0["first_above_chance_index"] == -1


def test_task_transitions_and_emergence_order(results, item_df):
    t = transitions.task_transitions(results, item_df, n_boot=40, seed=0)
    t = t[t["series"] == "tiny"].set_index("task")
    for task, (chance, _, mid, _, _) in TASKS.items():
        assert t.loc[task, "source"] == "items"
        assert t.loc[task, "chance"] == pytest.approx(chance)
        assert t.loc[task, "midpoint"] == pytest.approx(mid, abs=0.25)
    order = transitions.emergence_order(t.reset_index())
    assert transitions.emergence_order(pd.DataFrame()).empty
    # planted: easy_task leaves chance at the highest loss (midpoint 5.5), then mc2_task (4.5), hard_task (3.8)
    assert list(order["task"]) == ["easy_task", MC2_TASK, "hard_task"]
    # without items the aggregate (parametric) path gives a close answer
    agg = transitions.task_transitions(results, None, n_boot=40, chance={t: v[0] for t, v in TASKS.items()})
    agg = agg.set_index(["series", "task"])
    assert agg.loc[("tiny", "easy_task"), "source"] == "aggregate"
    assert agg.loc[("tiny", "easy_task"), "midpoint"] == pytest.approx(5.5, abs=0.3)


# ---------------------------------------------------------------- items
def test_item_trajectories_planted_first_solved():
    # 5 checkpoints; item a solved from 2; b solved once at 1 (a fluke), then from 3; c solved 1..2 then forgotten
    m = pd.DataFrame([[0, 0, 1, 1, 1], [0, 1, 0, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]],
                     index=["a", "b", "c", "d", "e"], columns=[f"c{i}" for i in range(5)])
    tr = items.item_trajectories(m, window=2)
    assert tr.loc["a", "first_solved"] == "c2" and pd.isna(tr.loc["a", "forgotten_at"])
    assert tr.loc["b", "first_solved"] == "c3"
    assert tr.loc["c", "first_solved"] == "c1" and tr.loc["c", "forgotten_at"] == "c3"
    assert pd.isna(tr.loc["d", "first_solved"]) and not tr.loc["d", "ever_correct"]
    assert tr.loc["e", "first_solved"] == "c4"  # the window is cut at the last checkpoint
    ev = items.learning_events(tr, m.columns)
    assert ev.set_index("checkpoint").loc["c3", "forgotten"] == 1


def test_item_matrix_and_neighbour_tests(item_df):
    m, info = items.item_matrix(item_df, "easy_task")
    assert m.shape == (N_ITEMS, len(LOSSES))
    assert list(info["step"]) == sorted(info["step"])
    assert items.chance_level(item_df, "hard_task") == pytest.approx(0.5)
    tr = items.item_trajectories(m)
    assert (tr["forgotten_at"].isna()).all()  # planted items stay solved
    nt = items.neighbour_tests(item_df, "easy_task", n_boot=300)
    assert len(nt) == len(LOSSES) - 1
    big = nt.loc[nt["delta"].idxmax()]
    assert big["significant"] and big["p_mcnemar"] < 0.01


def test_paired_bootstrap_planted_effect():
    rng = np.random.default_rng(0)
    a = (rng.random(800) < 0.5).astype(int)
    b = a.copy()
    flip = rng.choice(800, 80, replace=False)
    b[flip] = 1  # a real gain: ~40 items newly solved
    r = items.paired_bootstrap(a, b, n_boot=1000)
    assert r["delta"] > 0 and r["ci_low"] > 0 and r["p_bootstrap"] < 0.01 and r["lost"] == 0
    same = items.paired_bootstrap(a, a, n_boot=200)
    assert same["delta"] == 0 and same["p_bootstrap"] == 1.0 and same["p_mcnemar"] == 1.0
    noise = items.paired_bootstrap(a, rng.permutation(a), n_boot=1000)
    assert noise["ci_low"] < 0 < noise["ci_high"]


def test_gold_margin():
    df = pd.DataFrame({"loglikelihoods": [[-1.0, -2.0, -3.0], [-5.0, -1.0], [-2.0, -1.0]], "gold": [0, 0, None]})
    m = items.gold_margin(df)
    assert list(m[:2]) == [1.0, -4.0] and np.isnan(m[2])  # no single gold: no margin


# ---------------------------------------------------------------- continuous per-item values (mc2)
def test_continuous_items_stay_continuous(item_df, results):
    k, t, v = planted_mc2()
    m, _ = items.item_matrix(item_df, MC2_TASK)
    assert m.shape == (MC2_ITEMS, len(LOSSES)) and m.dtypes.eq(float).all()
    assert np.array_equal(m.to_numpy(), v)  # not truncated to 0/1
    acc = results[(results["task"] == MC2_TASK) & (results["metric"] == "acc")].sort_values("step")["value"]
    assert np.allclose(m.mean(axis=0), acc)
    # chance from the items: a uniform model scores T/K on each item
    assert items.chance_level(item_df, MC2_TASK) == pytest.approx((t / k).mean())
    assert items.chance_level(item_df, MC2_TASK) != pytest.approx((1 / k).mean())
    # solved = more than half of the mass on true answers; the values themselves kept
    tr = items.item_trajectories(m)
    first = [int(np.argmax(r > 0.5)) if (r > 0.5).any() else -1 for r in v]
    window_ok = [j < 0 or (v[i, j:j + 2] > 0.5).all() for i, j in enumerate(first)]
    ok = np.array(window_ok)
    assert (tr["first_solved_index"].to_numpy()[ok] == np.array(first)[ok]).all()
    assert np.array_equal(tr["final_value"], v[:, -1]) and np.array_equal(tr["max_value"], v.max(axis=1))
    assert (tr["n_correct"] == (v > 0.5).sum(axis=1)).all()
    above = items.item_trajectories(m, threshold=items.item_chance(item_df, MC2_TASK))
    assert (above["n_correct"] == (v > (t / k)[:, None]).sum(axis=1)).all()


def test_neighbour_tests_on_continuous_values(item_df):
    _, _, v = planted_mc2()
    nt = items.neighbour_tests(item_df, MC2_TASK, n_boot=300)
    assert len(nt) == len(LOSSES) - 1 and (nt["test"] == "wilcoxon").all() and "p_mcnemar" not in nt
    assert np.allclose(nt["delta"], np.diff(v.mean(axis=0)))
    big = nt.loc[nt["delta"].idxmax()]  # planted: the steepest part of the sigmoid
    assert big["after"] == "tiny-step_00000700" and big["significant"] and big["p_wilcoxon"] < 1e-6
    assert big["ci_low"] > 0
    # a continuous difference that is noise only is not significant; no difference at all gives p = 1
    rng = np.random.default_rng(3)
    a = rng.random(500)
    noise = items.paired_bootstrap(a, a + rng.normal(0, 0.05, 500), n_boot=1000)
    assert noise["test"] == "wilcoxon" and noise["p_wilcoxon"] > 0.05 and noise["ci_low"] < 0 < noise["ci_high"]
    same = items.paired_bootstrap(a, a, n_boot=200)
    assert same["delta"] == 0 and same["p_bootstrap"] == 1.0 and same["p_test"] == 1.0


def test_transition_of_a_continuous_task(results, item_df):
    k, t, v = planted_mc2()
    tr = transitions.task_transitions(results, item_df, n_boot=40, seed=0)
    r = tr[(tr["series"] == "tiny") & (tr["task"] == MC2_TASK)].iloc[0]
    assert r["source"] == "items" and r["chance"] == pytest.approx((t / k).mean())
    assert r["midpoint"] == pytest.approx(MC2_MID, abs=0.15)
    # the discrete transition (one-sided t-test of score - item chance): not where the planted gain is
    # far below the noise's standard error (checkpoints 0-1), at the latest where it is > 10 standard errors (4)
    ck = r["first_above_chance_checkpoint"]
    assert ck in {f"tiny-step_{s:08d}" for s in (300, 400, 500)}


def test_chance_levels_table(item_df):
    k, t, _ = planted_mc2()
    c = items.chance_levels(item_df).set_index("task")
    assert c.loc[MC2_TASK, "source"] == "items" and c.loc[MC2_TASK, "chance"] == pytest.approx((t / k).mean())
    assert c.loc["easy_task", "chance"] == pytest.approx(0.25) and c.loc["easy_task", "n_items"] == N_ITEMS
    assert c.loc["hellaswag", "source"] == "task" and c.loc["hellaswag", "chance"] == 0.25
    assert c.loc["winogrande", "chance"] == 0.5 and c.loc["lambada_openai", "chance"] == 0.0
    assert np.isnan(c.loc["truthfulqa_mc2", "chance"])  # no fixed level: it comes from the items only
    assert "true answers / answers" in c.loc["truthfulqa_mc2", "rule"]


# ---------------------------------------------------------------- probes
def test_probe_fluency_and_table(ws, results):
    pr = analysis.load_probes(ws / "results" / "offline")
    fl = probes.fluency_vs_loss(pr, results, mode="greedy")
    assert fl["val_loss"].notna().sum() == len(LOSSES)
    c = probes.fluency_correlations(fl).set_index("measure")
    assert c.loc["repetition_rate", "spearman_rho"] == pytest.approx(1.0)  # planted: repetition falls with loss
    assert c.loc["distinct_2", "spearman_rho"] == pytest.approx(-1.0)
    tab = probes.output_table(pr, max_chars=40)
    assert tab.index[-1] == "tiny-sft-hf" and tab.index[0] == "tiny-step_00000100"
    assert tab.map(len).max().max() <= 40
    po = probes.prompt_outputs(pr, "p1")
    assert list(po["checkpoint"])[-1] == "tiny-sft-hf" and po["output"].str.len().iloc[0] > 0
    d = probes.instruct_deltas(pr).set_index(["mode", "measure"])
    assert d.loc[("greedy", "repetition_rate"), "delta"] == pytest.approx(0.05 - (0.9 - 0.08 * 9))


# ---------------------------------------------------------------- training curves
def test_training_curves_and_summary(ws):
    m = analysis.load_runs(ws / "runs")
    c = training.curves(m)
    assert {"loss_smooth", "lr"} <= set(c["train"].columns)
    s = training.summary(m).set_index("run")
    assert s.loc["tiny", "steps"] == 200 and s.loc["tiny", "val_loss_drop"] > 3
    assert training.ema([1, 1, 1])[0] == pytest.approx(1.0)
    smp = training.samples(m)
    assert list(smp.columns) == ["run", "step", "text"] and len(smp) == 2
    assert training.samples(m[m["kind"] == "train"]).empty
    v = c["val"][c["val"]["run"] == "tiny"]
    assert training.value_at(v, "step", "val_loss", [0])[0] == pytest.approx(7.0)
    assert np.isnan(training.value_at(v, "step", "val_loss", [10**6])[0])


# ---------------------------------------------------------------- ablations
def test_resume_spike_planted():
    ref = train_rows(200, seed=3)
    resumed = [r for r in ref if r["step"] > RESUME_STEP]
    r0 = ablation.resume_spike(resumed, ref, RESUME_STEP)
    assert r0.peak_excess == 0 and r0.max_abs_diff == 0 and r0.steps_to_recover == 1
    bumped = []
    for r in resumed:
        r = dict(r)
        r["loss"] += SPIKE * np.exp(-(r["step"] - RESUME_STEP - 1) / 10)
        bumped.append(r)
    r1 = ablation.resume_spike(bumped, ref, RESUME_STEP, tol=0.02)
    assert r1.peak_excess == pytest.approx(SPIKE) and r1.peak_step == RESUME_STEP + 1
    # planted recovery: 0.8 exp(-(k-1)/10) <= 0.02 first at k = 1 + ceil(10 ln 40) = 38
    assert r1.steps_to_recover == 38
    assert r1.final_gap < 0.001
    with pytest.raises(ValueError, match="share no"):
        ablation.resume_spike(bumped, ref, 10**6)


def test_throughput_and_agreement():
    rows = train_rows(100)
    for r in rows:
        r["tokens_per_s"] = 100.0 if r["step"] <= 50 else 300.0
    t = ablation.throughput_by_segment(rows, boundaries=[50])
    assert list(t["tokens_per_s_median"]) == [100.0, 300.0]
    assert ablation.loss_agreement(rows, rows)["max_abs_diff"] == 0.0


def test_load_ablation(ws):
    summary, m = analysis.load_ablation(ws / "runs" / "ablate" / "resume")
    assert analysis.io.ablation_kind(summary) == "resume"
    assert set(m["run"]) == {"reference", "full_state", "weights_only", "weights_only_stretched_lr"}
    s2, _ = analysis.load_ablation(ws / "runs" / "ablate" / "world-size")
    assert analysis.io.ablation_kind(s2) == "world-size"
    assert json.loads((ws / "runs" / "ablate" / "resume" / "summary.json").read_text())["resume_step"] == RESUME_STEP


# ---------------------------------------------------------------- weight dynamics
def test_weight_dynamics_planted_change(tmp_path):
    import torch

    from analysis import weights
    from dmas_repro.model.transformer import ModelConfig, build
    from dmas_repro.model.weights import save_model_files

    cfg = ModelConfig(n_layer=2, dim=16, n_head=2, n_kv_head=1, ffn_dim=32, vocab_size=64, context_length=16)
    torch.manual_seed(0)
    model = build(cfg)
    run = tmp_path / "run"
    for step, scale in ((10, None), (20, 0.5)):
        if scale is not None:
            with torch.no_grad():
                model.layers[1].mlp.w_up.weight.mul_(1 + scale)  # planted: only this tensor changes, by 50%
        d = run / "checkpoints" / f"step_{step:08d}"
        d.mkdir(parents=True)
        save_model_files(model, d)
        (d / "trainer_state.json").write_text(json.dumps({"step": step, "tokens": step * 100}))
    df = weights.weight_dynamics(run)
    last = df[df["step"] == 20].set_index("param")
    assert last.loc["layers.1.mlp.w_up.weight", "rel_change"] == pytest.approx(0.5, rel=1e-5)
    assert (last.drop(index="layers.1.mlp.w_up.weight")["rel_change"] == 0).all()
    assert df[df["step"] == 10]["rel_change"].isna().all()
    pl = weights.per_layer(df)
    g = pl[pl["step"] == 20].set_index("group")
    assert g.loc["layer 0", "rel_change"] == 0 and 0 < g.loc["layer 1", "rel_change"] < 0.5
    assert list(pl[pl["step"] == 20]["group"]) == ["embedding", "layer 0", "layer 1", "head"]
    out = tmp_path / "w.csv"
    assert weights.main([str(run), "--out", str(out)]) == 0 and out.stat().st_size > 0
    assert weights.main([str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert weights._hf_to_ours()["model.layers.3.self_attn.q_proj.weight"] == "layers.3.attn.wq.weight"
