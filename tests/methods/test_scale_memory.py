"""Memory at real sizes: the big-Hessian inverse (float32, one factorisation), the float32 Hessian total,
the compact token embedding of the layer engine, rows read alone from safetensors, and merges written a
block of rows at a time. Each must give what the plain path gives (bit for bit where the arithmetic is the
same, to float32 accuracy where the precision changes)."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES

WINDOWS = [[(i * 7 + j * 3) % 200 + 3 for j in range(12)] for i in range(3)]


def _spd(n: int, seed: int = 0, dead=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g) * torch.linspace(0.2, 3.0, n)
    x[:, list(dead)] = 0
    return (2 / x.shape[0]) * (x.T @ x)


@pytest.mark.parametrize("act_order", [True, False])
def test_big_inverse_factor_is_the_reference_factor(act_order):
    from slmctl.methods.quantize.gptq import _big_inverse_factor, _inverse_cholesky

    H = _spd(300, dead=(5, 77))
    keep = H.clone()
    diag = torch.diag(H).double()
    diag[diag == 0] = 1
    perm = torch.argsort(diag, descending=True, stable=True) if act_order else None
    ref = H.double().clone()
    ref[[5, 77], [5, 77]] = 1
    if perm is not None:
        ref = ref[perm][:, perm]
    want = _inverse_cholesky(ref, 0.01)
    got = _big_inverse_factor(H, 0.01, perm)
    assert torch.equal(H, keep)  # the caller's Hessian is left alone
    assert got.dtype == torch.float32 and torch.equal(got, torch.triu(got))
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))


def test_lower_inverse_by_halves():
    from slmctl.methods.quantize.gptq import _lower_inverse_

    L = torch.linalg.cholesky(_spd(200, seed=3))
    inv = L.clone()
    _lower_inverse_(inv, leaf=16)  # several levels of halving, in place
    assert torch.allclose(inv @ L, torch.eye(200), atol=1e-4)
    assert torch.equal(inv, torch.tril(inv))
    leaf = torch.linalg.solve_triangular(L, torch.eye(200), upper=False)  # one leaf: the plain solve
    whole = L.clone()
    _lower_inverse_(whole, leaf=256)
    assert torch.equal(whole, leaf)


def test_in_place_reordering_and_reversal():
    from slmctl.methods.quantize.gptq import _reorder_symmetric_, _reverse_

    M = torch.randn(37, 37)
    for order in (torch.randperm(37, generator=torch.Generator().manual_seed(1)), torch.arange(37).flip(0),
                  torch.arange(37)):
        got = M.clone()
        _reorder_symmetric_(got, order, rows_per_block=5)
        assert torch.equal(got, M[order][:, order])
    got = M.clone()
    _reverse_(got, chunk=7)  # chunks that do not divide the half
    assert torch.equal(got, M.flip((0, 1)))


def test_big_inverse_factor_overwrite_reuses_the_buffer():
    from slmctl.methods.quantize.gptq import _big_inverse_factor

    H = _spd(300, seed=5)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    want = _big_inverse_factor(H, 0.01, perm)
    own = H.clone()
    got = _big_inverse_factor(own, 0.01, perm, overwrite=True)
    assert got.data_ptr() == own.data_ptr() and torch.equal(got, want)


def test_big_inverse_factor_damps_more_when_needed():
    from slmctl.methods.quantize.gptq import _big_inverse_factor

    v = torch.randn(50, 1)
    H = v @ v.T  # rank one: not positive definite with 1% damping in float32 only if unlucky; must still work
    U = _big_inverse_factor(H, 0.01)
    assert torch.isfinite(U).all() and (torch.diag(U) > 0).all()


def test_big_hessians_route_through_the_float32_path(monkeypatch):
    import slmctl.methods.quantize.gptq as G
    from slmctl.methods.quantize.common import QuantConfig

    monkeypatch.setattr(G, "BIG_HESSIAN", 64)
    acc = G.HessianAccumulator(96)
    assert acc.S.dtype == torch.float32
    xs = [torch.randn(1, 40, 96) for _ in range(3)]
    for x in xs:
        acc.add(x)
    X = torch.cat([x.reshape(-1, 96) for x in xs]).double()
    H = acc.result()
    assert torch.allclose(H.double(), 2 / X.shape[0] * X.T @ X, rtol=1e-5, atol=1e-5)
    assert acc.result() is H  # scaled once
    with pytest.raises(RuntimeError):
        acc.add(xs[0])
    calls = []
    big = G._big_inverse_factor
    monkeypatch.setattr(G, "_big_inverse_factor", lambda *a, **k: calls.append(1) or big(*a, **k))
    res = G.gptq_quantize_weight(torch.randn(32, 96), H, QuantConfig(4, 32))
    assert calls and res.q.shape == (32, 96)


def test_safetensors_rows_read_alone(tmp_path):
    from safetensors.torch import save_file

    from slmctl.io.safetensors import open_file

    t = torch.randn(50, 7).to(torch.bfloat16)
    save_file({"a": torch.ones(3), "e": t}, str(tmp_path / "m.safetensors"))
    tensors, _ = open_file(tmp_path / "m.safetensors")
    idx = [0, 1, 2, 9, 30, 31, 49]
    assert torch.equal(tensors["e"].rows(idx), t[idx])
    assert tensors["e"].rows([]).shape == (0, 7)
    with pytest.raises(IndexError):
        tensors["e"].rows([50])


def _embed(folder, monkeypatch, compact: bool):
    import slmctl.layerwise as L
    from slmctl.io.artifact import open_artifact

    monkeypatch.setenv("SLMCTL_COMPACT_EMBEDDING", "1" if compact else "0")
    lm = L.LayerwiseModel(open_artifact(folder))
    emb, head = lm.model.get_input_embeddings(), lm.model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    first = lm.embed(WINDOWS)
    outs = [step.run() for step in L.iter_layers(lm, hidden=first, capture=False)]
    assert tied == (head is not None and head.weight is emb.weight)  # a tied LM head stays tied, an untied one untied
    return first, outs, emb.weight.is_meta, lm


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compact_embedding_gives_the_full_tables_hidden_states(tiny_models, monkeypatch, family):
    try:
        full, full_outs, _, _ = _embed(tiny_models[family], monkeypatch, compact=False)
    except Exception as exc:  # noqa: BLE001  (a family the layer engine does not run is not this test's)
        pytest.skip(f"{family}: the layer engine does not run ({type(exc).__name__})")
    small, small_outs, meta, lm = _embed(tiny_models[family], monkeypatch, compact=True)
    assert all(torch.equal(a, b) for a, b in zip(full, small))
    assert all(torch.equal(x, y) for a, b in zip(full_outs, small_outs) for x, y in zip(a, b))
    if isinstance(lm.model.get_input_embeddings(), torch.nn.Embedding):
        assert meta  # the table is not kept after embed()


def test_merge_by_blocks_of_rows_is_bit_for_bit_the_whole_merge(tiny_llama, tmp_path, monkeypatch):
    from conftest import perturbed_copy
    from safetensors.torch import load_file

    import slmctl.pipelines.merge as M

    a = tiny_llama
    b = perturbed_copy(a, tmp_path / "b", seed=1)
    outs = {}
    for blocks in (False, True):
        monkeypatch.setattr(M, "ROW_BLOCK_BYTES", 256 if blocks else 1 << 40)
        for method, extra in (("linear", {"weights": "0.7,0.3"}), ("task_arithmetic", {"base": str(a), "weights": "0.5"})):
            srcs = [str(a), str(b)] if method == "linear" else [str(b)]
            o = tmp_path / f"{method}-{blocks}"
            M.merge(srcs, o, method=method, **extra)
            outs[method, blocks] = load_file(str(o / "model.safetensors"))
    for method in ("linear", "task_arithmetic"):
        whole, byrows = outs[method, False], outs[method, True]
        assert sorted(whole) == sorted(byrows)
        for k in whole:
            assert torch.equal(whole[k], byrows[k]), (method, k)


def test_add_chunks_checks_sizes_and_dtypes(tmp_path):
    from slmctl.io.safetensors import ShardedWriter

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="bytes written"):
        with ShardedWriter(tmp_path / "a") as w:
            w.add_chunks("x", (4, 3), [torch.zeros(2, 3)])
    with pytest.raises(ValueError, match="dtypes"):
        with ShardedWriter(tmp_path / "b") as w:
            w.add_chunks("x", (4, 3), [torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float16)])


@pytest.mark.parametrize("kind", ["random", "ties", "zeros", "signed-zero", "inf"])
@pytest.mark.parametrize("dim", [0, 1])
def test_selection_masks_equal_the_stable_sort(kind, dim):
    """The k lowest by selection (kthvalue) is the stable sort's first k, ties included (Wanda's and
    magnitude's masks stay bit for bit what they were)."""
    from slmctl.methods.prune.masks import _lowest

    g = torch.Generator().manual_seed(7)
    s = torch.rand(37, 300, generator=g)
    if kind == "ties":
        s = (s * 8).floor()
    elif kind == "zeros":
        s[:, ::3] = 0
    elif kind == "signed-zero":
        s = (s * 4).floor() - 2
        s[s == 0] = -0.0
        s[:, ::5] = 0.0
    elif kind == "inf":
        s[:, ::7] = float("inf")
    x = s if dim == 1 else s.reshape(-1)
    for k in (1, 5, 150, 299, x.shape[dim] - 1, x.shape[dim]):
        want = torch.zeros(x.shape, dtype=torch.bool).scatter_(dim, torch.sort(x, dim=dim, stable=True)[1].narrow(dim, 0, k), True)
        assert torch.equal(_lowest(x, k, dim), want), (kind, k)


def test_in_place_lapack_cholesky_equals_torch_and_restores_on_failure(monkeypatch):
    """The factor through LAPACK's spotrf on the Hessian's own buffer is torch's (bit for bit), and a matrix
    that is not positive definite comes back as it was, for the retry with more damping."""
    from slmctl.methods.quantize import gptq

    H = _spd(260, seed=7)
    perm = torch.randperm(260, generator=torch.Generator().manual_seed(3))
    fast = gptq._big_inverse_factor(H, 0.01, perm)
    monkeypatch.setattr(gptq, "_lapack_potrf", lambda: None)  # torch's Cholesky on a copy
    slow = gptq._big_inverse_factor(H, 0.01, perm)
    assert torch.equal(fast, slow)
    monkeypatch.undo()
    potrf = gptq._lapack_potrf()
    if potrf is not None:
        A = torch.randn(300, 300, generator=torch.Generator().manual_seed(4))
        A = (A + A.T).contiguous()  # symmetric, indefinite
        M = A.clone()
        assert not gptq._cholesky_in_place(M, potrf)
        assert torch.equal(M, A)


def test_lower_inverse_leaves_no_reference_cycle():
    """The n x n factor is freed as soon as its last name goes, without the cyclic collector (a recursive
    closure kept it alive until a collection: 306 MB at a 1.5B model's down projection)."""
    import gc
    import weakref

    from slmctl.methods.quantize.gptq import _lower_inverse_

    L = torch.tril(torch.rand(700, 700, generator=torch.Generator().manual_seed(0))) + 700 * torch.eye(700)
    gc.disable()
    try:
        _lower_inverse_(L, leaf=64)
        ref = weakref.ref(L)
        del L
        assert ref() is None
    finally:
        gc.enable()


def test_sliced_codes_permutation_packing_and_dequantisation_equal_the_whole(monkeypatch):
    """Row slices (column permutation in place, bit packing, dequantisation) give bit for bit what the
    whole-matrix expressions give; uint8 codes pack and dequantise as int32 ones do."""
    from slmctl.io.quantized_formats import packing
    from slmctl.methods.quantize.gptq import HessianAccumulator, _permute_columns_

    g = torch.Generator().manual_seed(1)
    M = torch.randn(37, 50, generator=g)
    order = torch.randperm(50, generator=g)
    want = M[:, order]
    assert torch.equal(_permute_columns_(M.clone(), order, rows_per_slice=4), want)
    codes = torch.randint(0, 16, (37, 64), generator=g, dtype=torch.int32)
    whole = packing.pack_rows(codes, 4)
    scale, zero = torch.rand(2, 37, generator=g) + 0.1, torch.randint(0, 16, (2, 37), generator=g)
    g_idx = (torch.arange(64) // 32).to(torch.int32)[torch.randperm(64, generator=g)]
    deq = scale[g_idx.long()].T * (codes.float() - zero[g_idx.long()].T.float())
    monkeypatch.setattr(packing, "PACK_ELEMENTS", 64 * 5)
    monkeypatch.setattr(packing, "DEQUANT_ELEMENTS", 64 * 3)
    for q in (codes, codes.to(torch.uint8)):
        assert torch.equal(packing.pack_rows(q, 4), whole)
        assert torch.equal(packing.dequantize(q, scale, zero, g_idx), deq)
    acc = HessianAccumulator(8)
    acc.add(torch.randn(5, 8, generator=g))
    H = acc.take()
    assert H.shape == (8, 8) and acc.S is None
