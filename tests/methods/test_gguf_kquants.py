"""slmctl's own GGUF quantisers against llama.cpp's: ggml's block maths byte for byte (with and without an
importance matrix), gguf-py's dequantisers, llama-quantize's type mixture, GPTQ on the block grids."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import pytest

from slmctl.io.gguf_types import block_bytes, block_size
from slmctl.methods.quantize import gguf_kquants as K

KINDS = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
GGML_ID = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13,
           "q6_k": 14}


def _weights(rows: int = 24, cols: int = 512, seed: int = 0) -> np.ndarray:
    """Gaussian rows with the awkward cases: zero blocks, constant and one-signed blocks, outliers, float16 values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 0.03).astype(np.float32)
    x[1, :256] = 0
    x[2, :40] = 0.01
    x[3] = np.abs(x[3])
    x[4] = -np.abs(x[4])
    x[5, 7] = 0.9
    x[6, ::3] *= 40
    x[7, 64:96] = 1e-9
    return x.astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def ggml():
    llama_cpp = pytest.importorskip("llama_cpp")
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    cands = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    if not cands:
        pytest.skip("llama-cpp-python ships no libggml-base")
    lib = ctypes.CDLL(str(cands[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]

    def quantize(kind, x, qw=None):
        x = np.ascontiguousarray(x, dtype=np.float32)
        rows, cols = x.shape
        nbytes, n = block_bytes(kind), block_size(kind)
        out = np.zeros((rows, cols // n * nbytes), dtype=np.uint8)
        q = None if qw is None else np.ascontiguousarray(qw, dtype=np.float32)
        lib.ggml_quantize_chunk(GGML_ID[kind], x.ctypes.data, out.ctypes.data, 0, rows, cols,
                                None if q is None else q.ctypes.data)
        return out

    return quantize


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["ref", "imatrix"])
def test_bytes_equal_ggml(ggml, kind, weighted):
    x = _weights()
    qw = None
    if weighted:
        qw = (np.random.default_rng(1).gamma(1.0, 1.0, x.shape[1]) + 1e-3).astype(np.float32)
        qw[:5] = 0  # dead input channels
    ours, theirs = K.quantize(kind, x, qw), ggml(kind, x, qw)
    bad = np.flatnonzero((ours != theirs).any(axis=1))
    assert not bad.size, f"{kind}: rows {bad.tolist()} differ from ggml"


@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_matches_gguf_py(kind):
    gq = pytest.importorskip("gguf.quants")
    import gguf

    x = _weights(8, 256, seed=2)
    data = K.quantize(kind, x)
    ref = gq.dequantize(data, getattr(gguf.GGMLQuantizationType, kind.upper()))
    ours = K.dequantize(kind, data, x.shape)
    np.testing.assert_array_equal(ours, ref.reshape(x.shape).astype(np.float32))
    # and the codes survive a round trip through the bytes
    blk = K.unpack(kind, data)
    np.testing.assert_array_equal(K.pack(blk), data.reshape(len(blk.codes), -1))


def test_importance_moves_the_error_to_unimportant_columns():
    x = _weights(64, 256, seed=3)
    qw = np.ones(256, dtype=np.float32)
    qw[:32] = 1e4
    for kind in ("q4_0", "q4_k", "q3_k"):
        plain = K.dequantize(kind, K.quantize(kind, x), x.shape)
        weighted = K.dequantize(kind, K.quantize(kind, x, qw), x.shape)
        e_plain = ((plain - x)[:, :32] ** 2).sum()
        e_weighted = ((weighted - x)[:, :32] ** 2).sum()
        assert e_weighted < e_plain, kind


def test_gptq_on_the_grid_lowers_output_error():
    from slmctl.methods.quantize.gguf_gptq import gptq_blocks, output_error

    rng = np.random.default_rng(4)
    cols, rows = 256, 48
    # correlated inputs of lower rank plus noise, a few loud channels: what real activations look like
    X = rng.standard_normal((2048, 96)) @ rng.standard_normal((96, cols)) + 0.3 * rng.standard_normal((2048, cols))
    X[:, :8] *= 6
    H = (2.0 / len(X)) * X.T @ X
    W = _weights(rows, cols, seed=5)
    for kind in ("q4_0", "q4_k", "q6_k"):
        searched = K.search(kind, W, np.diag(H).astype(np.float32) / 2).values().reshape(W.shape)
        blk = gptq_blocks(kind, W, H)
        lo, hi = K.CODE_RANGE[kind]
        assert lo <= blk.codes.min() and blk.codes.max() <= hi
        g = blk.values().reshape(W.shape)
        # same scales as the search; only the codes moved
        np.testing.assert_array_equal(blk.grid()[0], K.search(kind, W, np.diag(H).astype(np.float32) / 2).grid()[0])
        assert output_error(W, g, H) < 0.5 * output_error(W, searched, H), kind


def test_mixture_rules():
    from slmctl.methods.quantize.gguf_mixture import ModelInfo, tensor_types

    names = [("token_embd.weight", (1000, 576))]
    for b in range(8):
        names += [(f"blk.{b}.attn_q.weight", (576, 576)), (f"blk.{b}.attn_v.weight", (192, 576)),
                  (f"blk.{b}.ffn_down.weight", (576, 1536)), (f"blk.{b}.ffn_up.weight", (1536, 576))]
    info = ModelInfo(n_layer=8, n_gqa=3)
    t = tensor_types(names, "q4_k_m", info, has_imatrix=False)
    assert t["token_embd.weight"] == ("q8_0", None)  # tied: the output's rule, 576 % 256 -> q8_0
    assert t["blk.0.attn_q.weight"] == ("q5_0", "q4_k")  # 576 columns do not fill 256-blocks
    assert t["blk.0.attn_v.weight"] == ("q8_0", "q6_k") and t["blk.1.attn_v.weight"] == ("q5_0", "q4_k")
    assert t["blk.0.ffn_down.weight"] == ("q6_k", None) and t["blk.2.ffn_down.weight"] == ("q4_k", None)
    assert t["blk.3.ffn_down.weight"] == ("q6_k", None)  # (3 - 1) % 3 == 2: a "more bits" layer
    q40 = tensor_types(names, "q4_0", info, has_imatrix=True)
    assert q40["blk.0.ffn_down.weight"] == ("q4_1", None) and q40["blk.1.ffn_down.weight"] == ("q4_0", None)
    assert tensor_types(names, "q4_0", info, has_imatrix=False)["blk.0.ffn_down.weight"] == ("q4_0", None)
    assert tensor_types(names, "q2_k", info, has_imatrix=False)["blk.0.attn_q.weight"] == ("q4_0", "q2_k")


def test_tensor_type_rules_and_reference_types():
    """--tensor-type rules (first regex found wins) and a reference file's types override the mixture; a type the
    rows cannot hold falls back as llama.cpp's would, and is said to be a fallback from the type asked for."""
    from slmctl.errors import InputError, UsageError
    from slmctl.methods.quantize.gguf_mixture import ModelInfo, override_types, parse_tensor_types, tensor_types

    names = [("token_embd.weight", (1000, 512))]
    for b in range(4):
        names += [(f"blk.{b}.attn_v.weight", (128, 512)), (f"blk.{b}.ffn_down.weight", (512, 576))]
    base = tensor_types(names, "q4_k_m", ModelInfo(n_layer=4), has_imatrix=False)
    types = dict(base)
    rules = parse_tensor_types([r"blk\.[01]\.ffn_down=q8_0", "ffn_down=q2_k", "attn_v=Q4_K"])
    changed = override_types(names, types, rules=rules)
    assert types["blk.0.ffn_down.weight"] == ("q8_0", None)  # the first rule that matches decides
    assert types["blk.2.ffn_down.weight"] == ("q4_0", "q2_k")  # 576 columns: Q2_K falls back to Q4_0
    assert all(types[f"blk.{b}.attn_v.weight"] == ("q4_k", None) for b in range(4))
    assert types["token_embd.weight"] == base["token_embd.weight"] and "token_embd.weight" not in changed
    assert changed["blk.3.ffn_down.weight"] == ("q2_k", "q4_0")
    # the types of another file (numpy shapes), then the rules on top
    ref = {n: ("q5_0" if "ffn" in n else "q8_0", s) for n, s in names}
    types = dict(base)
    override_types(names, types, rules=parse_tensor_types(["blk\\.3\\.=f16"]), reference=ref, reference_name="r.gguf")
    assert types["blk.0.ffn_down.weight"] == ("q5_0", None) and types["token_embd.weight"] == ("q8_0", None)
    assert types["blk.3.ffn_down.weight"] == ("f16", None) and types["blk.3.attn_v.weight"] == ("f16", None)
    for bad, msg in (({**ref, "blk.1.attn_v.weight": ("q8_0", (64, 512))}, r"blk.1.attn_v.weight has shape \[64, 512\]"),
                     ({k: v for k, v in ref.items() if k != "blk.2.ffn_down.weight"}, "has no tensor blk.2.ffn_down"),
                     ({**ref, "token_embd.weight": ("iq2_xxs", (1000, 512))}, "IQ2_XXS, a type slmctl does not write")):
        with pytest.raises(InputError, match=msg):
            override_types(names, dict(base), reference=bad, reference_name="r.gguf")
    for spec, msg in (("attn_v", "PATTERN=TYPE"), ("attn_v=q4_k_m", "unknown tensor type"), ("(=q8_0", "regular")):
        with pytest.raises(UsageError, match=msg):
            parse_tensor_types([spec])


def test_quantize_gguf_tensor_types_from_another_file(tiny_llama, tmp_path, cli):
    """--tensor-types-from copies another GGUF's mixture (and its file type); --tensor-type rules go on top; both
    are refused where they cannot apply, before any work."""
    gguf = pytest.importorskip("gguf")

    def types(path):
        return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}

    ref = tmp_path / "ref.gguf"
    code, _, err = cli("quantize", str(tiny_llama), "--format", "gguf", "--type", "q4_0", "--method", "rtn",
                       "--tensor-type", "attn_v=q8_0", "--tensor-type", r"blk\.0\.=q5_1", "--no-report", "-o", str(ref))
    assert code == 0, err
    want = types(ref)
    assert want["blk.0.attn_v.weight"] == want["blk.1.attn_v.weight"] == "Q8_0"  # the first rule that matches
    assert want["blk.0.attn_q.weight"] == "Q5_1" and want["blk.1.attn_q.weight"] == "Q4_0"
    dst = tmp_path / "same.gguf"
    code, out, err = cli("quantize", str(tiny_llama), "--format", "gguf", "--method", "rtn", "--tensor-types-from",
                         str(ref), "--no-report", "-o", str(dst))
    assert code == 0, err
    assert out.strip() == str(dst) and "--type q4_0 (the file type of" in err
    assert types(dst) == want
    data = [{t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(f)).tensors} for f in (dst, ref)]
    assert data[0] == data[1]  # the same tensors (the headers differ by the provenance record)
    prov = json.loads((tmp_path / "same.gguf.slmctl.json").read_text())
    assert any(i.get("role") == "tensor types" and len(i["sha256"]) == 64 for i in prov["inputs"])
    code, out, err = cli("quantize", str(tiny_llama), "--bits", "4", "--tensor-type", "attn_v=q8_0", "-o",
                         str(tmp_path / "x"))
    assert code == 2 and "--format gguf" in err and not out
    code, out, err = cli("quantize", str(tiny_llama), "--format", "gguf", "--tensor-types-from",
                         str(tmp_path / "missing.gguf"), "-o", str(tmp_path / "y.gguf"))
    assert code == 1 and "missing.gguf" in err and not (tmp_path / "y.gguf").exists()


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory):
    """A llama whose rows fill 256-wide k-quant blocks (hidden 256, FFN 512), 4 layers, GQA 2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conftest import _tokenizer

    folder = tmp_path_factory.mktemp("wide")
    tok = _tokenizer(folder)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("ftype", ["q4_k_m", *(pytest.param(t, marks=pytest.mark.slow)
                                               for t in ("q3_k_m", "q2_k", "q4_0", "q6_k", "q5_k_s", "q3_k_l"))])
def test_file_equals_llama_quantize(wide_llama, tmp_path, ftype):
    """Same tensor types and the same bytes as llama-quantize from the f16 GGUF, with and without a matrix."""
    gguf = pytest.importorskip("gguf")
    pytest.importorskip("llama_cpp")
    from slmctl import api
    from slmctl.io.artifact import open_artifact
    from slmctl.pipelines.gguf_quant import quantize_gguf
    from slmctl.pipelines.gguf_quant import to_gguf

    f16 = api.export(str(wide_llama), tmp_path / "f16.gguf", "gguf", outtype="f16")
    # slmctl quantises from the float16 values, as llama.cpp does from the f16 file
    g16 = {t.name: t for t in gguf.GGUFReader(str(f16)).tensors}
    rng = np.random.default_rng(0)
    im = {n: (rng.gamma(1.0, 1.0, int(t.shape[0])) + 1e-3).astype(np.float32)
          for n, t in g16.items() if n.startswith("blk.") and len(t.shape) == 2}
    art = open_artifact(wide_llama)
    path = tmp_path / "wide.imatrix"
    from slmctl.io.imatrix import read_imatrix, write_imatrix

    write_imatrix(path, {k: (v * 7, 7) for k, v in im.items()}, datasets=["t"], chunk_size=1, chunk_count=7)
    art16 = _as_f16(art, tmp_path / "hf16")
    for tag, matrix in (("plain", None), ("imatrix", read_imatrix(path))):
        theirs = quantize_gguf(f16, tmp_path / f"llama-{tag}.gguf", ftype, imatrix=matrix)
        ours = tmp_path / f"slmctl-{tag}.gguf"
        if matrix is None:
            to_gguf(art16, str(wide_llama), ours, ftype, method="rtn")
        else:
            to_gguf(art16, str(wide_llama), ours, ftype, method="imatrix", imatrix=path)
        a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors}
        b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors}
        assert a.keys() == b.keys()
        types = {n: (a[n].tensor_type.name, b[n].tensor_type.name) for n in a}
        assert all(x == y for x, y in types.values()), {n: v for n, v in types.items() if v[0] != v[1]}
        differ = [n for n in a if np.asarray(a[n].data).tobytes() != np.asarray(b[n].data).tobytes()]
        assert not differ, f"{ftype} {tag}: {differ}"
        assert abs(ours.stat().st_size - theirs.stat().st_size) / theirs.stat().st_size < 0.005


def _as_f16(art, folder):
    """The HF model with its weights rounded to float16 (what llama.cpp reads from an f16 GGUF)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from slmctl.io.artifact import open_artifact

    if not folder.exists():
        shutil.copytree(art.path, folder)
        for f in folder.glob("*.safetensors"):
            sd = load_file(str(f))
            save_file({k: v.to(torch.float16).to(v.dtype) for k, v in sd.items()}, str(f), metadata={"format": "pt"})
    return open_artifact(folder)


# ---------------------------------------------------------------- the verbs, bad input, every family in llama.cpp
def test_quantize_format_gguf_gptq(tiny_llama, text_file, tmp_path, cli):
    gguf = pytest.importorskip("gguf")
    dst = tmp_path / "q.gguf"
    code, out, err = cli("quantize", str(tiny_llama), "--format", "gguf", "--type", "q4_k_m", "--data", str(text_file),
                         "--samples", "4", "--seq-len", "64", "--no-report", "-o", str(dst))
    assert code == 0, err
    assert out.strip() == str(dst)
    # rows of 32 cannot hold Q4_K: llama.cpp's fallback, said once per (type -> fallback)
    assert err.count("as llama.cpp does") == 2 and "Q5_0" in err and "Q8_0" in err
    r = gguf.GGUFReader(str(dst))
    assert r.fields["general.file_type"].contents() == 15
    kinds = {t.tensor_type.name for t in r.tensors}
    assert {"Q5_0", "Q8_0"} <= kinds
    code, out, err = cli("inspect", str(dst))
    assert code == 0 and "tensor types" in out and "Q5_0 x" in out


def test_imatrix_of_another_model_names_the_mismatch(tiny_llama, tmp_path, cli):
    from slmctl.io.imatrix import write_imatrix

    im = tmp_path / "other.imatrix"
    write_imatrix(im, {"blk.0.attn_q.weight": (np.ones(48, dtype=np.float32), 1)}, datasets=["x"], chunk_size=1,
                  chunk_count=1)
    code, out, err = cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "q4_0", "--imatrix", str(im),
                         "-o", str(tmp_path / "x.gguf"))
    assert code == 1 and "blk.0.attn_q.weight has 48 values" in err and not out


def test_quantised_gguf_input_needs_allow_requantize(tiny_llama, tmp_path, cli):
    """An already quantised GGUF is refused, naming its types and the flag; with --allow-requantize it is quantised."""
    pytest.importorskip("llama_cpp")
    q8 = tmp_path / "q8.gguf"
    code, _, err = cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "q8_0", "-o", str(q8))
    assert code == 0, err
    code, out, err = cli("quantize", str(q8), "--type", "q4_0", "-o", str(tmp_path / "q4.gguf"))
    assert code == 1 and "already quantised (Q8_0)" in err and "--allow-requantize" in err and not out
    assert not (tmp_path / "q4.gguf").exists()
    code, out, err = cli("quantize", str(q8), "--type", "q4_0", "--allow-requantize", "-o", str(tmp_path / "q4.gguf"))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "q4.gguf") and (tmp_path / "q4.gguf").stat().st_size < q8.stat().st_size


def test_gptq_needs_calibration_text(tiny_llama, tmp_path, cli):
    code, _, err = cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "q4_0", "--method", "gptq",
                       "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and "--data" in err


# (qwen3 is left out: slmctl's GGUF -> HF import of its explicit head_dim fails even for an f32 GGUF)
FAMS = ["llama", "qwen2", "phi3", "gemma2", "mistral"]


@pytest.mark.parametrize("family", [f if f == "llama" else pytest.param(f, marks=pytest.mark.slow) for f in FAMS])
def test_family_gptq_gguf_runs_its_own_weights(family, tiny_models, text_file, tmp_path):
    """llama.cpp's logits on slmctl's GPTQ file equal torch's on the file's dequantised weights (read back to HF)."""
    pytest.importorskip("llama_cpp")
    import torch
    from transformers import AutoModelForCausalLM

    from slmctl import api
    from slmctl.io.artifact import open_artifact
    from slmctl.io.libllama import open_llama
    from slmctl.pipelines.gguf_quant import to_gguf

    src = tiny_models[family]
    dst = tmp_path / f"{family}.gguf"
    to_gguf(open_artifact(src), str(src), dst, "q4_0", method="gptq", data=str(text_file), samples=4, seq_len=64)
    back = api.export(str(dst), tmp_path / "back", "hf")
    ids = [5, 17, 42, 7, 99, 3, 64, 12]
    with torch.no_grad():
        deq = AutoModelForCausalLM.from_pretrained(str(back), dtype=torch.float32).eval()(torch.tensor([ids])).logits[0]
        fp = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()(torch.tensor([ids])).logits[0]
    llm = open_llama(dst, n_ctx=64, n_batch=64, logits_all=True, n_threads=1, n_threads_batch=1, verbose=False,
                     type_k=0, type_v=0)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()
    gap = np.abs(got - deq.numpy()).max()
    quant_err = np.abs(deq.numpy() - fp.numpy()).max()
    assert gap < 2e-2 and gap < 0.5 * quant_err, (family, gap, quant_err)


def test_layerwise_importance_matrix_equals_the_model_forward(tiny_llama, text_file):
    """One layer-by-layer pass (the engine behind layerwise_imatrix and compute_imatrix) gives the mean squared
    inputs a whole-model forward with hooks on every linear gives (here, in the test), the output head's too."""
    import torch

    from slmctl.arch import spec_for
    from slmctl.hf import load_model
    from slmctl.io.artifact import open_artifact
    from slmctl.layerwise import LayerwiseModel
    from slmctl.pipelines.gguf_quant import layerwise_imatrix
    from slmctl.pipelines.importance import compute_imatrix

    art = open_artifact(tiny_llama)
    lm = LayerwiseModel(art)
    wins = lm.tokenize_windows(text_file.read_text(), seq_len=32, samples=3)
    ours = layerwise_imatrix(lm, wins)
    sums, _ = compute_imatrix(art, lm.tokenizer().decode(sum(wins, [])), ctx=32, chunks=3)
    spec, model, ref = spec_for(art.config), load_model(tiny_llama), {}

    def hook(mod, args, g):
        x = args[0].reshape(-1, args[0].shape[-1])
        s = (x * x).sum(0)
        ref[g] = (ref[g][0] + s, ref[g][1] + x.shape[0]) if g in ref else (s, x.shape[0])

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_pre_hook(lambda m, a, g=spec.gguf_name(f"{name}.weight"): hook(m, a, g))
    with torch.no_grad():
        for w in wins:
            model(input_ids=torch.tensor([w]), use_cache=False)
    assert ours and set(ours) == {k for k in ref if k.startswith("blk.")}
    assert set(sums) == set(ref) and "output.weight" in sums
    for k, v in ours.items():
        np.testing.assert_allclose(v, (ref[k][0] / ref[k][1]).numpy(), rtol=1e-5, atol=1e-7)
    for k, (s, n) in sums.items():
        assert n == ref[k][1]
        np.testing.assert_allclose(s / n, (ref[k][0] / n).numpy(), rtol=1e-5, atol=1e-7)
