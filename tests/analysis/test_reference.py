"""The reference trajectories as tests of the analysis: on the real OLMo-ladder 1B run (shipped store) the
sigmoid of HellaSwag accuracy against C4 loss equals an independent least-squares fit and its transition
lies inside the observed losses; and on planted curves, matched tokens, matched loss, emergence, items."""

import numpy as np
import pandas as pd
import pytest
from analysis_synth import PYTHIA_SIZES, REF_RUNS, REF_TASKS, sigmoid, write_reference_store
from scipy.optimize import curve_fit

import analysis
from analysis import reference as R
from analysis.io import shipped_reference


@pytest.fixture(scope="module")
def shipped():
    return R.reference_curves(R.load(shipped_reference()))


def test_olmo_1b_hellaswag_against_c4_loss_matches_an_independent_fit(shipped):
    g = shipped[(shipped.series == "OLMo-ladder-1B-1xC") & (shipped.task == "hellaswag")].sort_values("tokens")
    assert len(g) == 82 and (g.loss_def == "olmo-ladder c4_en loss").all() and (g.n == 10042).all()
    x, y = g["val_loss"].to_numpy(), g["value"].to_numpy()

    def logistic(loss, ceiling, midpoint, slope):  # floor at HellaSwag's chance, 1/4
        return 0.25 + (ceiling - 0.25) / (1 + np.exp(slope * (loss - midpoint)))

    p, cov = curve_fit(logistic, x, y, p0=[y.max(), np.median(x), 1.0], maxfev=20000)
    tr = R.fit_transitions(g, "val_loss", n_boot=50, seed=0)
    assert len(tr) == 1
    r = tr.iloc[0]
    assert r["chance"] == 0.25 and r["n_items"] == 10042 and r["n_source"] == "store"
    se = np.sqrt(np.diag(cov))
    for got, want, s in zip((r["fit_ceiling"], r["fit_midpoint"], r["fit_slope"]), p, se):
        assert abs(got - want) < 0.01 * s  # the same least-squares optimum, far inside its standard error
    sse = np.sum((logistic(x, *p) - y) ** 2)
    assert r["fit_rmse"] == pytest.approx(np.sqrt(sse / len(x)), rel=1e-6)
    # the transition (leaves chance by the margin 10,042 items detect) is inside the observed loss range
    assert x.min() < r["transition_low"] <= r["transition_loss"] <= r["transition_high"] < x.max()
    assert 4.0 < r["transition_loss"] < 4.6
    first = g.set_index("checkpoint").loc[r["first_above_chance_checkpoint"], "val_loss"]
    assert r["transition_loss"] - 0.3 < first  # the discrete crossing is near the fitted one


def test_shipped_curves_and_pythia_items(shipped):
    fam = shipped.groupby("family")["series"].nunique().to_dict()
    assert fam == {"olmo-ladder": 7, "pythia": 3}
    py = shipped[shipped.family == "pythia"]
    assert py["val_loss"].isna().all() and py["gold_bpb"].isna().all()  # not in Pythia's evaluations
    piqa = py[py.task == "piqa"]
    assert set(piqa.metric) == {"acc_norm"} and R.items_from_stderr(piqa.value, piqa.stderr) == 1838
    olmo = shipped[(shipped.family == "olmo-ladder") & (shipped.task == "boolq")]
    assert set(olmo.metric) == {"acc"} and olmo["gold_bpb"].notna().all()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    store = write_reference_store(d / "store", d / "src")
    return R.reference_curves(R.load(store))


def test_planted_transitions_and_emergence(planted):
    tr = R.fit_transitions(planted[planted.family == "olmo-ladder"], "val_loss", n_boot=30)
    for (_, task), r in tr.set_index(["series", "task"]).iterrows():
        ch, ceil, mid, slope, n = REF_TASKS[{"hellaswag": "hellaswag_val", "piqa": "piqa_val"}[task]]
        assert r["n_items"] == n and r["fit_midpoint"] == pytest.approx(mid, abs=0.05)
        assert r["fit_ceiling"] == pytest.approx(ceil, abs=0.02) and r["fit_slope"] == pytest.approx(slope, rel=0.1)
    order = R.emergence(tr)
    for s in REF_RUNS:  # piqa's curve leaves chance at a higher loss than hellaswag's: it emerges first
        o = order[order.series == f"OLMo-ladder-{s}"].set_index("task")["rank"]
        assert o["piqa"] < o["hellaswag"]
    tok = R.fit_transitions(planted[planted.family == "pythia"], "tokens", n_boot=10)
    r = tok[(tok.series == "Pythia-1.4B") & (tok.task == "arc_easy")].iloc[0]
    assert r["n_source"] == "store" and r["n_items"] == 2376
    assert r["midpoint_tokens"] == pytest.approx(1e9, rel=0.15)  # planted at -log10 tokens = -9
    assert r["transition_tokens_low"] <= r["transition_tokens"] <= r["transition_tokens_high"]
    with pytest.raises(ValueError):
        R.fit_transitions(planted, "steps")


def test_at_tokens_interpolates_in_log_tokens_and_flags_extrapolation():
    curve = pd.DataFrame({"tokens": [1e8, 1e9, 1e10, 0.0], "value": [0.2, 0.4, 0.5, 0.25]})
    got = R.at_tokens(curve, [1e9, 10**8.5, 10**9.5, 1e7, 1e11])
    assert got["value"].tolist() == pytest.approx([0.4, 0.3, 0.45, 0.2, 0.5])
    assert got["extrapolated"].tolist() == [False, False, False, True, True]
    assert got["nearest_tokens"].tolist() == [1e9, 1e8, 1e9, 1e8, 1e10]  # step 0 (no log) is not a point


def test_matched_tokens_at_the_ten_dmas_checkpoints(planted):
    dm = R.dmas_token_counts()
    assert len(dm) == 10 and dm["tokens"].iloc[0] == 2700 * 524288
    fake_dmas = pd.DataFrame({"checkpoint": ["step-20k"], "standard_task": ["arc_easy"], "value": [0.42]})
    m = R.matched_tokens(planted, tasks=["arc_easy", "piqa"], dmas=fake_dmas)
    pythia = {f"Pythia-{s[:-1]}{s[-1].upper()}" for s in PYTHIA_SIZES}
    assert set(m[m.task == "arc_easy"].series) == pythia
    assert set(m[m.task == "piqa"].series) == pythia | {f"OLMo-ladder-{r}" for r in REF_RUNS}
    one = m[(m.series == "Pythia-1.4B") & (m.task == "arc_easy")].set_index("checkpoint")
    g = planted[(planted.series == "Pythia-1.4B") & (planted.task == "arc_easy")]
    want = R.at_tokens(g, [one.loc["step-7.5k", "tokens"]])["value"].iloc[0]
    assert one.loc["step-7.5k", "value"] == want and not one["extrapolated"].any()
    assert one.loc["step-20k", "dmas_value"] == 0.42 and np.isnan(one.loc["step-35k", "dmas_value"])
    wide = R.matched_tokens_wide(m)
    flat = wide.reset_index()
    assert flat[(flat.task == "arc_easy") & (flat.checkpoint == "step-20k")]["DMaS (measured)"].tolist() == ["0.420"]
    assert list(wide.index.get_level_values(1)[:10]) == dm["checkpoint"].tolist()  # training order


def test_matched_loss_same_relation_gives_zero_difference(planted):
    """The planted runs share one accuracy(C4 loss) relation at different sizes and token counts: at matched
    loss they agree to the rounding of their accuracies; at matched tokens they do not."""
    m = R.at_matched_x(planted[planted.family == "olmo-ladder"], "val_loss")
    assert set(m.reference) == {"OLMo-ladder-1B-1xC"} and set(m.series) == {"OLMo-ladder-190M-1xC"}
    summ = R.matched_summary(m).set_index("task")
    assert (summ["max_abs_difference"] < 0.01).all() and (summ["n_points"] >= 5).all()
    olmo = planted[(planted.family == "olmo-ladder") & (planted.task == "hellaswag")]
    a = olmo[olmo.series == "OLMo-ladder-190M-1xC"].set_index("step")["value"]
    b = olmo[olmo.series == "OLMo-ladder-1B-1xC"].set_index("step")["value"]
    assert (a - b).abs().max() > 0.05  # same steps, different tokens and losses
    assert R.at_matched_x(planted, "gold_bpb").x_def.eq("gold answer bits per byte").all()


def test_dmas_side_prefers_the_released_suite(tmp_path):
    from analysis_synth import write_workspace

    root = write_workspace(tmp_path / "ws", parts=("results",))
    res = analysis.load_results(root / "results" / "offline")
    side = R.dmas_side(res)
    assert set(side.series) == {analysis.io.RELEASED_SERIES}
    assert set(R.dmas_side(res[res.series == "tiny"]).series) == {"tiny"}
    cv = R.dmas_curves(res)
    assert (cv.family == R.DMAS_FAMILY).all() and cv["val_loss"].notna().all()
    assert R.chance("arc_easy_validation") == 0.25 and R.chance("social_iqa") == pytest.approx(1 / 3)
    assert R.chance("mmlu_stem") == 0.25 and R.task_of("hellaswag_dev") == "hellaswag"
    assert sigmoid(4.0, 0.25, 0.7, 4.0, 3.0) == pytest.approx(0.475)
