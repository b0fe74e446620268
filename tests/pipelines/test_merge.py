"""slmctl merge: methods by hand on small tensors, pipelines on tiny Llamas, configs, LoRA folds, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from slmctl.io import mergekit_config as mkc
from slmctl.methods.merge import METHODS
from slmctl.methods.merge import sparsify as sp
from slmctl.methods.merge.linear import linear
from slmctl.methods.merge.lora import fold_lora
from slmctl.methods.merge.slerp import slerp
from slmctl.methods.merge.task_arithmetic import task_arithmetic
from slmctl.methods.merge.vocab import permute_embeddings
from conftest import load_dir, perturbed_copy  # noqa: E402  (shared helpers)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama and two perturbed copies of it (one architecture and tokenizer)."""
    root = tmp_path_factory.mktemp("merge")
    a = build_tiny("llama", root / "a", seed=0)
    return {"a": a, "b": perturbed_copy(a, root / "b", 1), "c": perturbed_copy(a, root / "c", 2)}


def same(x: dict, y: dict) -> bool:
    return sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------ methods on small tensors
def test_registry_lists_every_method_with_a_reference():
    for name in ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear", "passthrough",
                 "model_stock", "breadcrumbs", "della"):
        m = METHODS.get(name)
        assert m.url.startswith("https://") and m.doc


def test_linear_by_hand():
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    assert torch.allclose(linear([x, y], [1, 3]), (x + 3 * y) / 4)
    assert torch.allclose(linear([x, y], [1, 3], normalize=False), x + 3 * y)
    assert torch.equal(linear([x, y], [1, 0]), x)


def test_slerp_by_hand():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    mid = slerp(0.5, a, b)
    # the angle is between directions; magnitudes are interpolated with sin weights
    s = torch.sin(torch.tensor(torch.pi / 4)) / torch.sin(torch.tensor(torch.pi / 2))
    assert torch.allclose(mid, s * a + s * b, atol=1e-6)
    assert torch.equal(slerp(0.0, a, b), a) and torch.equal(slerp(1.0, a, b), b)
    # near-colinear tensors fall back to linear interpolation
    assert torch.allclose(slerp(0.25, a, 3 * a), 0.75 * a + 0.25 * 3 * a)


def test_ties_by_hand():
    base = torch.zeros(4)
    d1 = torch.tensor([3.0, -1.0, 0.5, 2.0])
    d2 = torch.tensor([-1.0, 2.0, 0.4, -3.0])
    ties = METHODS.get("ties")
    out = ties.apply({"x": base + d1, "y": base + d2}, base,
                     {"x": {"weight": 1.0, "density": 0.5}, "y": {"weight": 1.0, "density": 0.5}},
                     {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False})
    # trim to the top 2 magnitudes: d1 -> [3, 0, 0, 2], d2 -> [0, 2, 0, -3]
    # elected sign (sum): [+, +, 0 -> +, -]; agreeing entries averaged over agreeing weights
    assert torch.allclose(out, torch.tensor([3.0, 2.0, 0.0, -3.0]))


@pytest.mark.parametrize("method", ["ties", "breadcrumbs_ties"])
def test_sparsifying_models_side_by_side_changes_nothing(method, monkeypatch):
    """Large tensors sparsify each model's delta on its own thread; the result is bit-identical to one thread."""
    from slmctl.methods.merge import task_arithmetic as ta

    g = torch.Generator().manual_seed(5)
    base = torch.randn(64, 64, generator=g)
    models = {k: base + 0.01 * torch.randn(64, 64, generator=g) for k in "xyz"}
    params = {k: {"weight": w, "density": 0.4, "gamma": 0.01} for k, w in zip("xyz", (1.0, 0.5, 0.7))}
    opts = {"normalize": True, "rescale": False, "lambda": 1.0, "int8_mask": False}
    m = METHODS.get(method)
    monkeypatch.setattr(ta, "PARALLEL_MIN", 1 << 60)
    serial = m.apply(dict(models), base, params, opts)
    monkeypatch.setattr(ta, "PARALLEL_MIN", 0)
    monkeypatch.setattr(ta.os, "cpu_count", lambda: 3)
    threaded = m.apply(dict(models), base, params, opts)
    assert torch.equal(serial, threaded)


def test_ties_density_one_single_model_is_task_arithmetic():
    g = torch.Generator().manual_seed(0)
    base, x = torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)
    opts = {"normalize": False, "rescale": False, "lambda": 1.0, "int8_mask": False}
    ties = METHODS.get("ties").apply({"x": x}, base, {"x": {"weight": 0.7, "density": 1.0}}, opts)
    ta = METHODS.get("task_arithmetic").apply({"x": x}, base, {"x": {"weight": 0.7, "density": 1.0}}, opts)
    assert torch.allclose(ties, ta) and torch.allclose(ta, base + 0.7 * (x - base))


def test_task_arithmetic_lambda_and_normalize():
    base = torch.ones(3)
    d = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])]
    assert torch.allclose(task_arithmetic(base, d, [1, 1], lam=0.5), base + 0.5 * (d[0] + d[1]))
    assert torch.allclose(task_arithmetic(base, d, [1, 3], normalize=True), base + (d[0] + 3 * d[1]) / 4)


def test_magnitude_keeps_the_largest():
    x = torch.tensor([0.1, -5.0, 2.0, -0.3, 4.0])
    assert torch.equal(sp.magnitude(x, 0.4), torch.tensor([0.0, -5.0, 0.0, 0.0, 4.0]))
    assert torch.equal(sp.magnitude(x, 1.0), x)


@pytest.mark.parametrize("kind", ["distinct", "ties", "nan", "bf16"])
def test_magnitude_selects_what_mergekits_argsort_selects(kind):
    """The selection-based top-k equals mergekit's ``argsort(descending)[:k]`` exactly, ties and NaNs included."""
    g = torch.Generator().manual_seed(3)
    for n in (1, 2, 7, 1000, 50_000):
        x = torch.randn(n, generator=g)
        if kind == "ties":
            x = torch.randint(-3, 4, (n,), generator=g).float()  # every threshold tied across the cut
        elif kind == "nan":
            x[n // 2] = float("nan")
        elif kind == "bf16":
            x = x.to(torch.bfloat16)
        for density in (1e-9, 0.1, 0.5, 0.9):
            k = max(1, int(density * n))
            w = x.abs().reshape(-1).float()
            ref = torch.zeros(n, dtype=x.dtype)
            ref[torch.argsort(w, descending=True)[:k]] = 1
            want = x * ref
            got = sp.magnitude(x, density)
            assert torch.equal(got.isnan(), want.isnan()), (kind, n, density)
            assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want)), (kind, n, density)


def test_dare_drop_fraction_rescale_and_seed():
    x = torch.randn(200, 200, generator=torch.Generator().manual_seed(1))
    y1 = sp.bernoulli(x, 0.3, True, generator=torch.Generator().manual_seed(7))
    y2 = sp.bernoulli(x, 0.3, True, generator=torch.Generator().manual_seed(7))
    y3 = sp.bernoulli(x, 0.3, True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    kept = y1 != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    # mergekit's rescale: the kept entries are scaled so the L1 norm is unchanged
    assert torch.allclose(y1.abs().sum(), x.abs().sum(), rtol=1e-5)
    scale = (y1[kept] / x[kept])
    assert torch.allclose(scale, scale[0].expand_as(scale), rtol=1e-5)
    assert torch.equal(sp.bernoulli(x, 0.3, False, generator=torch.Generator().manual_seed(7)),
                       x * (y1 != 0))


def test_model_stock_equal_offsets_move_fully():
    base = torch.zeros(6)
    d = torch.arange(6.0)
    out = METHODS.get("model_stock").apply({"x": base + d, "y": base + d}, base, {}, {"filter_wise": False})
    assert torch.allclose(out, d)  # cos = 1 -> t = 1 -> the models' average


def test_lora_fold_by_hand():
    w, a, b = torch.randn(6, 4), torch.randn(2, 4), torch.randn(6, 2)
    assert torch.allclose(fold_lora(w, a, b, 0.5), w + 0.5 * b @ a)
    assert torch.allclose(fold_lora(w.T.contiguous(), a, b, 0.5, fan_in_fan_out=True), (w + 0.5 * b @ a).T)


def test_permute_embeddings_fills_like_mergekit():
    ea = torch.tensor([[1.0], [2.0], [3.0]])  # tokens x y z
    eb = torch.tensor([[10.0], [20.0]])  # tokens y w
    vocabs = {"a": {"x": 0, "y": 1, "z": 2}, "b": {"y": 0, "w": 1}}
    target = {"x": 0, "y": 1, "w": 2, "q": 3}
    out = permute_embeddings({"a": ea, "b": eb}, vocabs, target, base="a")
    # y in both: own rows; x only in a and w only in b: the donor's row for everyone; q nowhere: zeros
    assert out["a"].flatten().tolist() == [1.0, 2.0, 20.0, 0.0]
    assert out["b"].flatten().tolist() == [1.0, 10.0, 20.0, 0.0]


# ------------------------------------------------------------------ config parameters
def test_gradient_and_filters_resolve_as_mergekit():
    f = mkc.validator(0.0, "t")
    assert mkc.evaluate_setting("x", [0.0, 1.0], 0.25, f) == 0.25
    assert mkc.evaluate_setting("x", [0.0, 0.5, 1.0], 0.75, f) == pytest.approx(0.75)
    assert mkc.evaluate_setting("x", [0.0, 0.5, 1.0], 1.0, f) == 1.0
    conds = [{"filter": "self_attn", "value": [0, 1]}, {"value": 0.3}]
    assert mkc.evaluate_setting("model.layers.1.self_attn.q_proj.weight", conds, 1.0, f) == 1.0
    assert mkc.evaluate_setting("model.layers.1.mlp.up_proj.weight", conds, 1.0, f) == 0.3
    assert mkc.resolve("t", [None, {"t": 0.2}], tensor_name="x", t=0, default=None, required=True) == 0.2
    with pytest.raises(Exception, match="missing parameter 't'"):
        mkc.resolve("t", [{}], tensor_name="x", t=0, default=None, required=True)


def test_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("merge_method: slerp\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n")
    with pytest.raises(Exception, match="exactly one of 'models', 'slices'"):
        mkc.load(bad)
    bad.write_text("merge_method: passthrough\nslices:\n  - sources:\n     - {model: a, layer_range: [0, 2]}\n"
                   "     - {model: b, layer_range: [0, 1]}\n")
    with pytest.raises(Exception, match="same number of layers"):
        mkc.load(bad)
    bad.write_text("merge_method: [oops\n")
    with pytest.raises(Exception, match="not valid YAML"):
        mkc.load(bad)


# ------------------------------------------------------------------ pipelines on tiny models
def test_linear_weights_one_zero_returns_the_first_model(trio, tmp_path, cli):
    code, out, err = cli("merge", str(trio["a"]), str(trio["b"]), "--method", "linear", "--weights", "1,0",
                         "-o", str(tmp_path / "m"))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "m")
    assert same(load_dir(tmp_path / "m"), load_dir(trio["a"]))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2 and (tmp_path / "m" / "tokenizer.json").is_file()


def test_linear_of_a_model_with_itself_is_itself(trio, tmp_path):
    from slmctl import api

    api.merge([str(trio["b"]), str(trio["b"]) + "/"], tmp_path / "m", method="linear", weights="0.3,0.7")
    got, want = load_dir(tmp_path / "m"), load_dir(trio["b"])
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-7)


@pytest.mark.parametrize("t,end", [(0, "a"), (1, "b")])
def test_slerp_endpoints(trio, tmp_path, cli, t, end):
    code, _, err = cli("merge", str(trio["a"]), str(trio["b"]), "--method", "slerp", "--t", str(t),
                       "-o", str(tmp_path / "m"))
    assert code == 0, err
    assert same(load_dir(tmp_path / "m"), load_dir(trio[end]))


def test_slerp_gradient_over_layers(trio, tmp_path):
    from slmctl import api

    api.merge([str(trio["a"]), str(trio["b"])], tmp_path / "m", method="slerp", t="0,1")
    got, a, b = load_dir(tmp_path / "m"), load_dir(trio["a"]), load_dir(trio["b"])
    # 2 layers: layer 0 at t=0 (= a), layer 1 at t=1 (= b); embeddings at t=0
    assert torch.equal(got["model.layers.0.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])


def test_ties_density_one_one_model_equals_task_arithmetic(trio, tmp_path):
    from slmctl import api

    api.merge([str(trio["a"]), str(trio["b"])], tmp_path / "ties", method="ties", base=str(trio["a"]),
              density=1.0, weights=0.6, normalize=False)
    api.merge([str(trio["a"]), str(trio["b"])], tmp_path / "ta", method="task_arithmetic", base=str(trio["a"]),
              weights=0.6)
    x, y = load_dir(tmp_path / "ties"), load_dir(tmp_path / "ta")
    a, b = load_dir(trio["a"]), load_dir(trio["b"])
    for k in a:
        assert torch.allclose(x[k], y[k], atol=1e-7)
        assert torch.allclose(y[k], a[k] + 0.6 * (b[k] - a[k]), atol=1e-6)


def test_dare_is_seeded(trio, tmp_path):
    from slmctl import api

    args = ([str(trio["a"]), str(trio["b"]), str(trio["c"])],)
    kw = dict(method="dare_ties", base=str(trio["a"]), density=0.5)
    api.merge(*args, tmp_path / "s1", seed=3, **kw)
    api.merge(*args, tmp_path / "s2", seed=3, **kw)
    api.merge(*args, tmp_path / "s3", seed=4, **kw)
    one, two, three = load_dir(tmp_path / "s1"), load_dir(tmp_path / "s2"), load_dir(tmp_path / "s3")
    assert same(one, two)
    assert not same(one, three)
    assert all(torch.isfinite(v).all() for v in one.values())


def test_passthrough_slices_stack_layers(trio, tmp_path, cli):
    cfg = tmp_path / "f.yml"
    cfg.write_text(f"""merge_method: passthrough
slices:
  - sources: [{{model: {trio['a']}, layer_range: [0, 2]}}]
  - sources:
      - model: {trio['b']}
        layer_range: [1, 2]
        parameters: {{scale: 0.5}}
""")
    code, out, err = cli("merge", "--config", str(cfg), "-o", str(tmp_path / "m"))
    assert code == 0, err
    got, a, b = load_dir(tmp_path / "m"), load_dir(trio["a"]), load_dir(trio["b"])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_hidden_layers"] == 3
    assert torch.equal(got["model.layers.1.self_attn.q_proj.weight"], a["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(got["model.layers.2.self_attn.q_proj.weight"], 0.5 * b["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(got["model.norm.weight"], 0.5 * b["model.norm.weight"])  # post weights: last slice
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    # the result is a working 3-layer model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    logits = model(torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size) and torch.isfinite(logits).all()


def test_yaml_config_roundtrip_and_provenance(trio, tmp_path, cli):
    cfg = tmp_path / "ties.yml"
    cfg.write_text(f"""merge_method: ties
base_model: {trio['a']}
models:
  - model: {trio['b']}
    parameters: {{weight: 1.0, density: [0.2, 0.8]}}
dtype: float32
""")
    code, out, err = cli("merge", "--config", str(cfg), "-o", str(tmp_path / "m"), "--max-shard-size", "20KB",
                         "--json")
    assert code == 0, err
    assert json.loads(out)["output"] == str(tmp_path / "m")
    shards = sorted((tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "m" / "model.safetensors.index.json").is_file()
    got = load_dir(tmp_path / "m")
    assert sorted(got) == sorted(load_dir(trio["a"]))
    from slmctl.io.safetensors import read_header

    prov = json.loads(read_header(shards[0])[1]["slmctl.provenance"])
    assert prov["verb"] == "merge" and prov["recipe"]["method"] == "ties" and len(prov["inputs"]) == 2
    # the input hashes are computed on a background thread while the tensors merge; they must still be right
    from slmctl.io.hashing import artifact_sha256

    assert [i["sha256"] for i in prov["inputs"]] == [artifact_sha256(trio["b"]), artifact_sha256(trio["a"])]
    assert all(json.loads(read_header(s)[1]["slmctl.provenance"]) == prov for s in shards)
    assert "merge_method: ties" in (tmp_path / "m" / "mergekit_config.yml").read_text()
    # the density gradient reaches the layers: layer 0 (t=0) keeps 20 % of b's delta, layer 1 (t=1) 80 %
    a = load_dir(trio["a"])
    for layer, density in ((0, 0.2), (1, 0.8)):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        changed = (got[name] != a[name]).float().mean().item()
        assert changed == pytest.approx(density, abs=0.01)


def make_adapter(folder: Path, base: Path, r: int = 2, alpha: float = 4.0) -> dict[str, tuple]:
    """A PEFT-layout LoRA adapter on q_proj and v_proj, written by hand."""
    from safetensors.torch import save_file

    folder.mkdir()
    sd = load_dir(base)
    g = torch.Generator().manual_seed(5)
    tensors, parts = {}, {}
    for i in range(2):
        for mod in ("q_proj", "v_proj"):
            w = sd[f"model.layers.{i}.self_attn.{mod}.weight"]
            a, b = torch.randn(r, w.shape[1], generator=g), torch.randn(w.shape[0], r, generator=g)
            key = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"] = a, b
            parts[f"model.layers.{i}.self_attn.{mod}.weight"] = (a, b)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj"],
         "base_model_name_or_path": str(base), "fan_in_fan_out": False}))
    return parts


def test_lora_fold_equals_w_plus_ba_scale(trio, tmp_path, cli):
    parts = make_adapter(tmp_path / "adapter", trio["a"])
    code, out, err = cli("merge", "--lora", str(tmp_path / "adapter"), str(trio["a"]), "-o", str(tmp_path / "m"))
    assert code == 0, err
    got, base = load_dir(tmp_path / "m"), load_dir(trio["a"])
    assert sorted(got) == sorted(base)
    for name, w in base.items():
        if name in parts:
            a, b = parts[name]
            assert torch.allclose(got[name], w + (b @ a) * (4.0 / 2), atol=1e-5)
        else:
            assert torch.equal(got[name], w)


def test_lora_ref_inside_a_config(trio, tmp_path):
    from slmctl import api

    parts = make_adapter(tmp_path / "adapter", trio["a"])
    api.merge(None or [], tmp_path / "m", config={"merge_method": "linear", "models": [
        {"model": f"{trio['a']}+{tmp_path / 'adapter'}", "parameters": {"weight": 1.0}}]})
    got, base = load_dir(tmp_path / "m"), load_dir(trio["a"])
    name = "model.layers.1.self_attn.v_proj.weight"
    a, b = parts[name]
    assert torch.allclose(got[name], base[name] + 2.0 * b @ a, atol=1e-5)


# ------------------------------------------------------------------ checks before any tensor work
def test_architecture_mismatch(trio, others, tmp_path, cli):
    code, _, err = cli("merge", str(trio["a"]), str(others["gemma2"]), "--method", "linear",
                       "-o", str(tmp_path / "m"))
    assert code == 1 and "cannot merge Gemma2ForCausalLM" in err and "hint:" in err
    assert not (tmp_path / "m").exists()


def test_vocabulary_mismatch_needs_a_tokenizer_source(trio, tmp_path, cli):
    from safetensors.torch import load_file, save_file

    small = tmp_path / "small"
    small.mkdir()
    for f in trio["b"].iterdir():
        (small / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(small / "model.safetensors"))
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:300].clone()
    save_file(sd, str(small / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = cli("merge", str(trio["a"]), str(small), "--method", "slerp", "--t", "0.5",
                       "-o", str(tmp_path / "m"))
    assert code == 1 and "vocabulary mismatch" in err and "--tokenizer-source" in err
    # with the base's tokenizer the rows are aligned by token: the 300 shared rows are merged,
    # rows that only the base has keep the base's values
    code, _, err = cli("merge", str(trio["a"]), str(small), "--method", "linear", "--base", str(trio["a"]),
                       "--tokenizer-source", "base", "-o", str(tmp_path / "m"))
    assert code == 0, err
    got, a = load_dir(tmp_path / "m")["model.embed_tokens.weight"], load_dir(trio["a"])["model.embed_tokens.weight"]
    assert got.shape == a.shape
    assert torch.equal(got[300:], a[300:]) and not torch.equal(got[:300], a[:300])


def test_missing_tensor_is_named(trio, tmp_path, cli):
    from safetensors.torch import load_file, save_file

    holey = tmp_path / "holey"
    holey.mkdir()
    for f in trio["b"].iterdir():
        (holey / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(holey / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(holey / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = cli("merge", str(trio["a"]), str(holey), "--method", "linear", "-o", str(tmp_path / "m"))
    assert code == 1 and "model.layers.1.mlp.up_proj.weight" in err and "missing tensors" in err


@pytest.mark.parametrize("args,needle,code", [
    (["--method", "slerpp", "--t", "0.5"], "did you mean 'slerp'", 2),
    (["--method", "ties"], "needs a base model", 2),
    (["--method", "slerp"], "needs --t", 2),
    (["--method", "linear", "--weights", "1,2,3"], "--weights has 3 values", 2),
    (["--method", "passthrough"], "passthrough takes", 2),
])
def test_usage_errors(trio, tmp_path, cli, args, needle, code):
    got, _, err = cli("merge", str(trio["a"]), str(trio["b"]), *args, "-o", str(tmp_path / "m"))
    assert got == code and needle in err, err


def test_existing_output_needs_force(trio, tmp_path, cli):
    (tmp_path / "m").mkdir()
    code, _, err = cli("merge", str(trio["a"]), str(trio["b"]), "--method", "linear", "-o", str(tmp_path / "m"))
    assert code == 1 and "--force" in err


def test_streams_one_output_tensor_at_a_time(trio, tmp_path, monkeypatch):
    """At most one loaded tensor per input model is alive at once (memory ~ (inputs + 1) x largest)."""
    import weakref

    from slmctl import api
    from slmctl.io.lazy import LazyTensor

    alive, peak = [0], [0]
    orig = LazyTensor.load

    def load(self):
        t = orig(self)
        alive[0] += 1
        peak[0] = max(peak[0], alive[0])
        weakref.finalize(t, lambda: alive.__setitem__(0, alive[0] - 1))
        return t

    monkeypatch.setattr(LazyTensor, "load", load)
    api.merge([str(trio["a"]), str(trio["b"]), str(trio["c"])], tmp_path / "m", method="ties",
              base=str(trio["a"]), density=0.5)
    assert 3 <= peak[0] <= 3


@pytest.mark.slow
def test_gguf_input_is_dequantised_and_renamed(tmp_path):
    """The Q4_1 sample GGUF merges with its own HF import: linear (1, 0) from the GGUF gives the import."""
    from slmctl import api

    api.merge(["sample:smollm2-135m-gguf", "sample:smollm2-135m"], tmp_path / "m", method="linear",
              weights="1,0")
    got = load_dir(tmp_path / "m")
    want = load_dir(api.load_artifact("sample:smollm2-135m")[1])
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.fixture(scope="module")
def others(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-fam")
    return {f: build_tiny(f, root / f) for f in ("gpt2", "gemma2")}


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_frankenmerge_other_families(others, tmp_path, family):
    """Layer stacking keeps per-layer config lists in step (gemma2's layer_types) and loads in transformers."""
    from transformers import AutoModelForCausalLM

    from slmctl import api

    src = others[family]
    cfg = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(src), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(src), "layer_range": [1, 2]}]}]}
    out = api.merge([], tmp_path / "m", config=cfg)
    c = json.loads((out / "config.json").read_text())
    before = json.loads((src / "config.json").read_text())
    assert c.get("num_hidden_layers", c.get("n_layer")) == 3
    if "layer_types" in before:
        assert c["layer_types"] == before["layer_types"] + before["layer_types"][1:]
    got, want = load_dir(out), load_dir(src)
    assert len(got) == len(want) + sum(1 for k in want if ".1." in k and (".h.1." in k or ".layers.1." in k))
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
