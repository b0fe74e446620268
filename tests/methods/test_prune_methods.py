"""prune internals: the fast SparseGPT loop equals the textbook one, shared calibration statistics are
exact, batching the calibration windows changes nothing, Minitron's importance, and per-layer widths
evaluate in slmctl (torch) and llama.cpp (the `deci` GGUF)."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from slmctl.methods.prune.sparsegpt import sparsegpt_prune  # noqa: E402
from slmctl.methods.prune.width_importance import Importance, head_activations, keep_heads  # noqa: E402
from conftest import _prune, _state  # noqa: E402


def _textbook_sparsegpt(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    """SparseGPT as the paper's reference code writes it (column by column on W, Q1/Err1 buffers)."""
    W = W.clone().float()
    rows, cols = W.shape
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H[range(cols), range(cols)] += percdamp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        if prunen == 0:
            tmp = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            thresh = torch.sort(tmp.flatten(), stable=True)[1][:int(round(tmp.numel() * sparsity))]
            mask1 = torch.zeros(tmp.numel(), dtype=torch.bool)
            mask1[thresh] = True
            mask1 = mask1.reshape(tmp.shape)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen and i % prunem == 0:
                tmp = W1[:, i:i + prunem] ** 2 / torch.diag(Hinv1)[i:i + prunem].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.sort(tmp, dim=1, stable=True)[1][:, :prunen], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


@pytest.mark.parametrize("pattern", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("shape", [(48, 200), (130, 64)])
def test_sparsegpt_equals_the_textbook_loop(shape, pattern):
    g = torch.Generator().manual_seed(0)
    rows, cols = shape
    X = torch.randn(512, cols, generator=g) * torch.rand(cols, generator=g) * 3
    H = 2 * X.t() @ X / 512
    H[:, 5] = H[5, :] = 0  # a dead input feature
    W = torch.randn(rows, cols, generator=g)
    ref = _textbook_sparsegpt(W, H, 0.5, *(pattern[1] - pattern[0], pattern[1]) if pattern else (0, 0), blocksize=64)
    got = sparsegpt_prune(W, {"hessian": H}, sparsity=0.5, pattern=pattern, blocksize=64)
    assert torch.equal(got == 0, ref == 0)  # the same mask, exactly
    assert torch.allclose(got, ref, atol=1e-5)
    assert (got[:, 5] == 0).all()


def test_shared_statistics_are_exact_and_never_confuse_two_inputs():
    """q/k/v see one tensor and share its product; a new tensor (even at a recycled address) is recomputed."""
    from slmctl.pipelines.prune import _finish_stats, _stats_adder

    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 7, 6, generator=g) for _ in range(3)]
    for needs, key in (("norm", "sq_norm"), ("hessian", "hessian")):
        stats: dict = {}
        add = _stats_adder(needs, stats)
        for x in xs:
            for name in ("q", "k", "v"):
                add(name, x)
            add("o", x * 2)
        _finish_stats(stats)
        flat = torch.cat([x.reshape(-1, 6) for x in xs])
        want = (flat ** 2).sum(0) if needs == "norm" else 2 * flat.t() @ flat / flat.shape[0]
        for name in ("q", "k", "v"):
            assert torch.allclose(stats[name][key], want, atol=1e-5), (needs, name)
        assert torch.allclose(stats["o"][key], want * 4, atol=1e-4)
        assert stats["q"][key] is not stats["k"][key]  # each linear owns its accumulator


def test_batched_calibration_changes_nothing(tiny_models, text_file, tmp_path, monkeypatch):
    import slmctl.pipelines.prune as pp

    src = tiny_models["qwen2"]
    a = _prune(src, tmp_path / "batched", text_file, method="wanda", pattern="2:4", eval_windows=0)
    orig = pp._calib_hidden
    monkeypatch.setattr(pp, "_calib_hidden", lambda ctx, lm: orig(ctx, lm, chunk=1))
    b = _prune(src, tmp_path / "one", text_file, method="wanda", pattern="2:4", eval_windows=0)
    assert a["recipe"] == b["recipe"]
    sa, sb = _state(tmp_path / "batched"), _state(tmp_path / "one")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_minitron_importance_aggregates_mean_over_sequence_and_l2_over_batch():
    x = torch.tensor([[[1.0, -2.0], [3.0, 0.0]],      # batch 0: mean |x| over S = [2, 1]
                      [[0.0, 4.0], [-2.0, 2.0]]])     # batch 1: [1, 3]
    imp = Importance()
    imp.add(x[:1])
    imp.add(x[1:])  # accumulates across calls as across the batch
    assert torch.allclose(imp.value(), torch.tensor([math.sqrt(5), math.sqrt(10)]))
    # per-head L2 norm of the attention output, per token: heads of width 2
    a = torch.tensor([[[3.0, 4.0, 0.0, 1.0]]])
    assert torch.allclose(head_activations(a, 2), torch.tensor([[[5.0, 1.0]]]))


def test_width_keeps_the_most_active_heads_and_channels(tiny_llama, text_file, tmp_path, monkeypatch):
    """The kept heads/channels are the top of the recorded importance, GQA group by group."""
    import slmctl.methods.prune.width_importance as wmod

    seen = []
    orig = wmod.keep_heads

    def spy(score, n_heads, n_kv, ratio):
        seen.append((score.clone(), n_heads, n_kv))
        return orig(score, n_heads, n_kv, ratio)

    monkeypatch.setattr(wmod, "keep_heads", spy)
    rep = _prune(tiny_llama, tmp_path / "w", text_file, method="width", heads_ratio=0.5, eval_windows=0)
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    for (score, h, kv), row in zip(seen, rep["layers"]):
        per = h // kv
        kept = row["heads_kept"]
        for g in range(kv):
            grp = [j for j in kept if j // per == g]
            assert len(grp) == len(kept) // kv  # the same number per kv group
            dropped = [j for j in range(g * per, (g + 1) * per) if j not in grp]
            assert min(score[grp]) >= max(score[dropped])


@pytest.mark.llamacpp
def test_per_layer_widths_evaluate_in_slmctl_and_in_llamacpp(tiny_llama, text_file, tmp_path):
    pytest.importorskip("llama_cpp")
    from slmctl import api

    out = tmp_path / "per_layer"
    rep = _prune(tiny_llama, out, text_file, method="width", mlp_ratio=0.25, heads_ratio=0.25, adaptive=True,
                 adaptive_lambda=0.2)
    assert "slmctl_per_layer" in json.loads((out / "config.json").read_text())
    assert "from_pretrained cannot load" in rep["formats_note"] and "deci" in rep["formats_note"]
    gguf = tmp_path / "per_layer.gguf"
    api.export(str(out), gguf, "gguf", outtype="f32")
    kw = dict(data=str(text_file), ctx=32, windows=1)  # as the prune report (FAST)
    on_torch = api.evaluate(str(out), **kw)           # slmctl's per-layer loader behind the torch backend
    on_llama = api.evaluate(str(gguf), **kw)          # llama.cpp; the tokenizer rebuilt from the GGUF metadata
    assert on_llama["backend"] == "llamacpp" and on_torch["backend"] == "torch"
    assert on_llama["ppl"] == pytest.approx(on_torch["ppl"], rel=1e-3)
    q = rep["quality"]  # the report's own check ran through the same loader
    same = api.evaluate(str(out), data=q["data"], ctx=q["ctx"], windows=q["windows"])
    assert q["ppl_after"] == pytest.approx(same["ppl"], rel=1e-6)
