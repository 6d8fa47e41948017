"""Training-speed options of the model (fused chunked cross-entropy, activation checkpointing) give
the same losses and gradients as the plain path; the benchmark harness produces its JSON fields."""

import json

import pytest
import torch
import torch.nn.functional as F

from dmas_repro import cli
from dmas_repro.core.errors import UserError
from dmas_repro.model.transformer import LinearCrossEntropy, ModelConfig, build
from dmas_repro.speed import bench

SMALL = ModelConfig(n_layer=2, dim=64, n_head=4, n_kv_head=2, ffn_dim=160, vocab_size=1000, context_length=32)


def _batch(cfg, B=3, T=21, ignore=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    y = x[:, 1:].clone()
    if ignore:
        y[0, :5] = -100
        y[2, -3:] = -100
    return x[:, :-1], y


def _loss_and_grads(model, x, y, **opts):
    for k, v in opts.items():
        setattr(model, k, v)
    model.zero_grad(set_to_none=True)
    loss = model(x, targets=y)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.ce_chunk_tokens, model.activation_checkpointing = 0, False
    return loss.detach(), grads


def _assert_grads_close(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, **tol)


@pytest.mark.parametrize("chunk", [1, 7, 16, 63, 1000])
def test_fused_chunked_cross_entropy_equals_plain(chunk):
    torch.manual_seed(0)
    m = build(SMALL)
    x, y = _batch(SMALL)
    ref_loss, ref = _loss_and_grads(m, x, y)
    loss, got = _loss_and_grads(m, x, y, ce_chunk_tokens=chunk)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    _assert_grads_close(got, ref, rtol=1e-5, atol=1e-7)


def test_linear_cross_entropy_function_matches_autograd():
    torch.manual_seed(1)
    h = torch.randn(37, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 24, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    t[3] = t[30] = -100
    ref = F.cross_entropy(h @ w.T, t, ignore_index=-100, reduction="sum")
    gh, gw = torch.autograd.grad(ref * 0.37, (h, w))
    out = LinearCrossEntropy.apply(h, w, t, 8, torch.float64)
    torch.testing.assert_close(out.to(ref.dtype), ref)
    gh2, gw2 = torch.autograd.grad(out * 0.37, (h, w))
    torch.testing.assert_close(gh2, gh)
    torch.testing.assert_close(gw2, gw)
    # only one input needing a gradient; and no gradient at all (evaluation)
    w.requires_grad_(False)
    (gh3,) = torch.autograd.grad(LinearCrossEntropy.apply(h, w, t, 8, torch.float64), (h,))
    torch.testing.assert_close(gh3, gh / 0.37)
    with torch.no_grad():
        torch.testing.assert_close(LinearCrossEntropy.apply(h, w, t, 5, torch.float64).to(ref.dtype), ref)


def test_fused_cross_entropy_under_bf16_autocast_is_close():
    torch.manual_seed(0)
    m = build(SMALL)
    x, y = _batch(SMALL)

    def run(chunk):
        m.ce_chunk_tokens = chunk
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(x, targets=y)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters()}

    ref_loss, ref = run(0)
    loss, got = run(16)
    assert got["lm_head.weight"].dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    for k in ref:  # bf16 matmuls round differently in the two paths: compare at bf16 precision
        err = (got[k] - ref[k]).norm() / ref[k].norm()
        assert err < 0.05, (k, err.item())


def test_wrapped_lm_head_uses_checkpointed_chunks():
    class Scaled(torch.nn.Module):  # stands in for an adapter around the head
        def __init__(self, inner):
            super().__init__()
            self.inner, self.scale = inner, torch.nn.Parameter(torch.tensor(1.5))

        def forward(self, h):
            return self.inner(h) * self.scale

    torch.manual_seed(0)
    m = build(SMALL)
    m.lm_head = Scaled(m.lm_head)
    x, y = _batch(SMALL)
    ref_loss, ref = _loss_and_grads(m, x, y)
    loss, got = _loss_and_grads(m, x, y, ce_chunk_tokens=10)
    torch.testing.assert_close(loss, ref_loss)
    _assert_grads_close(got, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk", [0, 16])
def test_activation_checkpointing_equal_gradients(chunk):
    torch.manual_seed(0)
    m = build(SMALL)
    x, y = _batch(SMALL)
    ref_loss, ref = _loss_and_grads(m, x, y, ce_chunk_tokens=chunk)
    loss, got = _loss_and_grads(m, x, y, ce_chunk_tokens=chunk, activation_checkpointing=True)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    _assert_grads_close(got, ref, rtol=1e-6, atol=1e-8)
    with torch.no_grad():  # without gradients it changes nothing
        plain = m(x)
        m.activation_checkpointing = True
        torch.testing.assert_close(m(x), plain, rtol=0, atol=0)


def test_fused_loss_compiles_without_graph_breaks():
    torch._dynamo.reset()
    m = build(SMALL)
    m.ce_chunk_tokens = 16
    x, y = _batch(SMALL)
    assert torch._dynamo.explain(m)(x, targets=y).graph_break_count == 0


def test_bench_train_smoke_json(tmp_path):
    out = tmp_path / "bench.json"
    rc = cli.main(["bench", "train", "--preset", "tiny", "--model", "n_layer=1", "--model", "vocab_size=512",
                   "--model", "context_length=32", "--micro-batch", "2", "--steps", "1", "--warmup", "1",
                   "--rounds", "2", "--variants", "ours-eager,ours-compile,hf,ours-eager/ce0/foreach",
                   "--compile-backend", "eager",
                   "--ce-chunk-tokens", "24", "--peak-flops", "1e11", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["variants"]) == {"ours-eager", "ours-compile", "hf", "ours-eager/ce0/foreach"}
    plain = res["variants"]["ours-eager/ce0/foreach"]
    assert plain["ce_chunk_tokens"] == 0 and not plain["fused_adamw"] and res["variants"]["ours-eager"]["fused_adamw"]
    assert res["variants"]["ours-eager"]["ce_chunk_tokens"] == 24 and res["variants"]["hf"]["ce_chunk_tokens"] is None
    assert abs(plain["first_loss"] - res["variants"]["hf"]["first_loss"]) < 1e-4  # its own model: same start
    for v in res["variants"].values():
        assert v["tokens_per_s"] > 0 and len(v["rounds_tokens_per_s"]) == 2
        assert 0 < v["mfu"] == pytest.approx(v["tokens_per_s"] * res["flops_per_token"] / 1e11)
        assert v["peak_mem_bytes"] >= 0
    # same weights and data: ours and HF start from the same loss (ours-compile continues ours-eager's model)
    assert abs(res["variants"]["ours-eager"]["first_loss"] - res["variants"]["hf"]["first_loss"]) < 1e-4
    ours = [v["tokens_per_s"] for k, v in res["variants"].items() if k.startswith("ours")]
    assert res["ratio_vs_hf"] == pytest.approx(max(ours) / res["variants"]["hf"]["tokens_per_s"])
    assert res["config"]["seq_len"] == 32 and res["config"]["model_config"]["n_layer"] == 1
    assert res["tokens_per_step"] == 64 and "flop_convention" in res and res["machine"]["torch"]


def test_bench_rejects_bad_arguments():
    with pytest.raises(UserError, match="unknown model field"):
        bench.parse_overrides(["n_layers=2"])
    with pytest.raises(UserError, match="variants"):
        bench.run_train_bench(bench.TrainBenchConfig(variants=("ours-fast",)))
    with pytest.raises(UserError, match="unknown option"):
        bench.run_train_bench(bench.TrainBenchConfig(variants=("hf/ce0",)))
    spec = bench.parse_variant("ours-compile/ce256/ac", bench.TrainBenchConfig())
    assert (spec.kind, spec.compiled, spec.ce_chunk_tokens, spec.activation_checkpointing) == ("ours", True, 256, True)
    with pytest.raises(UserError, match="context length"):
        bench.run_train_bench(bench.TrainBenchConfig(model={"context_length": 16}, seq_len=32))


def test_family_move_keeps_training():
    # the GPU benchmark parks idle models on the CPU; here both places are the CPU, the code path is the same
    bc = bench.TrainBenchConfig(micro_batch=2)
    cfg = SMALL
    m = build(cfg)
    from dmas_repro.model import hf

    spec = bench.parse_variant("hf", bc)
    fam = bench._Family(spec, cfg, {"hf": hf.hf_state_dict(m, vocab_size=cfg.vocab_size)}, "cpu", "float32")
    v = bench._Variant(spec, fam, bc)
    x, y = _batch(cfg, ignore=False)
    v.step(x, y)
    fam.where = "parked"
    fam.move("cpu")
    assert fam.where == "cpu" and all(t.device.type == "cpu" for s in fam.opt.state.values() for t in s.values())
    assert torch.isfinite(v.step(x, y))


def test_bench_eval_and_report(tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = cli.main(["bench", "eval", "--preset", "tiny", "--model", "n_layer=1", "--model", "context_length=64",
                   "--val-tokens", "300", "--val-batch-sizes", "1,3", "--lmeval-batch-sizes", "4",
                   "--hellaswag-limit", "3", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    v = res["val"]
    assert [r["batch_size"] for r in v["by_batch_size"]] == [1, 3]
    assert all(r["n_tokens"] == 256 and r["seconds"] > 0 for r in v["by_batch_size"])  # 4 windows of 64
    assert abs(v["by_batch_size"][0]["loss"] - v["by_batch_size"][1]["loss"]) < 1e-5  # batching changes nothing
    assert all(abs(r["fused_loss"] - r["loss"]) < 1e-5 for r in v["by_batch_size"])  # exact vocab: same loss
    assert v["seconds_per_checkpoint"] >= res["load_s"] > 0
    (e,) = res["lmeval"]["by_batch_size"]
    assert e["items"] == 3 and e["requests"] == 12 and e["requests_per_s"] > 0  # 4 endings per item
    capsys.readouterr()
    assert cli.main(["bench", "report", str(out)]) == 0
    md = capsys.readouterr().out
    assert "Seconds per checkpoint" in md and "| 3 |" in md and "hellaswag_dev" in md
    with pytest.raises(UserError, match="parts"):
        bench.run_eval_bench(bench.EvalBenchConfig(parts=("speed",)))


def test_ce_chunk_none_means_the_device_default():
    from dmas_repro.model.transformer import default_ce_chunk_tokens

    assert default_ce_chunk_tokens("cpu") > 0 and default_ce_chunk_tokens("cuda") > 0
    torch.manual_seed(0)
    m = build(SMALL)
    x, y = _batch(SMALL)
    ref_loss, ref = _loss_and_grads(m, x, y)
    loss, got = _loss_and_grads(m, x, y, ce_chunk_tokens=None)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    _assert_grads_close(got, ref, rtol=1e-5, atol=1e-7)
