"""k-quants through llama.cpp's quantiser, slmctl's importance matrix, and the GGUF writer's contract."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from slmctl.io.libllama import open_llama  # AMX-safe, as slmctl itself opens GGUFs

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")


def test_q4_k_m_with_computed_imatrix(tiny_llama, text_file, tmp_path, cli):
    im = tmp_path / "tiny.imatrix"
    dst = tmp_path / "q4km.gguf"
    code, out, err = cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "Q4_K_M", "-o", str(dst),
                         "--data", str(text_file), "--imatrix", str(im))
    assert code == 0, err
    assert out.strip() == str(dst)
    r = gguf.GGUFReader(str(dst))
    assert r.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert json.loads(r.fields["slmctl.provenance"].contents())["recipe"]["outtype"] == "q4_k_m"
    # rows of 32 do not fill 256-wide k-blocks: llama.cpp falls back per tensor, but quantises them
    assert any(t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) for t in r.tensors)
    # the importance matrix: every linear weight, positive mean squares, llama.cpp's GGUF imatrix layout
    m = gguf.GGUFReader(str(im))
    assert m.fields["general.type"].contents() == "imatrix"
    names = {t.name for t in m.tensors}
    for w in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight", "blk.1.ffn_gate.weight"):
        assert f"{w}.in_sum2" in names and f"{w}.counts" in names
    t = {t.name: t for t in m.tensors}
    assert len(t["blk.1.ffn_down.weight.in_sum2"].data) == 64  # FFN width = input channels of ffn_down
    assert (np.asarray(t["blk.0.attn_q.weight.in_sum2"].data) > 0).all()
    assert float(np.asarray(t["blk.0.attn_q.weight.counts"].data)[0]) >= 512
    llm = open_llama(dst, n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval([5, 6, 7, 8])
        assert np.isfinite(np.array(llm.scores[:4])).all()
    finally:
        llm.close()


def test_imatrix_changes_the_quantisation(tiny_llama, tmp_path):
    """The matrix reaches llama.cpp: a skewed one gives different bytes than none."""
    from slmctl import api
    from slmctl.pipelines.gguf_quant import quantize_gguf

    f16 = api.export(str(tiny_llama), tmp_path / "f16.gguf", "gguf", outtype="f16")
    plain = quantize_gguf(f16, tmp_path / "plain.gguf", "q4_0")
    skew = {f"blk.{b}.{w}.weight": np.r_[np.full(4, 1e4), np.full(28, 1e-4)].astype(np.float32)
            for b in (0, 1) for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")}
    withm = quantize_gguf(f16, tmp_path / "imat.gguf", "q4_0", imatrix=skew)
    a = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(plain)).tensors}
    b = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(withm)).tensors}
    assert a.keys() == b.keys()
    assert a["blk.0.attn_q.weight"] != b["blk.0.attn_q.weight"]
    assert a["blk.0.attn_norm.weight"] == b["blk.0.attn_norm.weight"]


def test_imatrix_roundtrip_gguf_and_legacy(tmp_path):
    from slmctl.io.imatrix import read_imatrix, write_imatrix

    sums = {"blk.0.attn_q.weight": (np.arange(1, 33, dtype=np.float32) * 10, 10)}
    p = write_imatrix(tmp_path / "m.gguf", sums, datasets=["x"], chunk_size=512, chunk_count=1)
    assert np.allclose(read_imatrix(p)["blk.0.attn_q.weight"], np.arange(1, 33))
    # legacy .dat: n, then (len, name, ncall, nval, values), as llama-imatrix wrote before GGUF
    name = b"blk.0.ffn_up.weight"
    vals = np.arange(32, dtype="<f4") * 4
    legacy = tmp_path / "m.dat"
    legacy.write_bytes(struct.pack("<ii", 1, len(name)) + name + struct.pack("<ii", 4, 32) + vals.tobytes())
    assert np.allclose(read_imatrix(legacy)["blk.0.ffn_up.weight"], np.arange(32))


def test_truncated_legacy_imatrix_is_a_clear_error(tmp_path):
    from slmctl.errors import FormatError
    from slmctl.io.imatrix import read_imatrix

    p = tmp_path / "bad.dat"
    p.write_bytes(struct.pack("<ii", 1, 1000) + b"abc")
    with pytest.raises(FormatError, match="bad.dat"):
        read_imatrix(p)


def test_imatrix_needs_a_k_quant(tiny_llama, tmp_path, cli, text_file):
    code, out, err = cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "f16", "--data", str(text_file),
                         "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and "quantised types" in err


def test_writer_refuses_misuse(tmp_path):
    from slmctl.io.gguf_writer import GGUFStreamWriter, GGUFWriterError

    w = GGUFStreamWriter(tmp_path / "w.gguf", "llama")
    w.add_tensor_info("a.weight", (2, 32), "q8_0")
    w.add_tensor_info("b.weight", (3,), "f32")
    with pytest.raises(GGUFWriterError):
        w.add_u32("late.key", 1)
    w.open()
    with pytest.raises(GGUFWriterError, match="declared"):
        w.write_tensor("b.weight", np.zeros(3, np.float32))  # out of order
    with pytest.raises(GGUFWriterError, match="bytes"):
        w.write_tensor("a.weight", np.zeros(10, np.uint8))  # wrong size
    w.write_tensor("a.weight", np.zeros((2, 34), np.uint8))
    with pytest.raises(GGUFWriterError, match="unwritten"):
        w.close()


def test_writer_output_reads_back_with_gguf_py(tmp_path):
    from slmctl.io.gguf_writer import I32, STRING, GGUFStreamWriter

    w = GGUFStreamWriter(tmp_path / "w.gguf", "llama")
    w.add_u32("llama.block_count", 2)
    w.add_f32("llama.rope.freq_base", 10000.0)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_array("tokenizer.ggml.tokens", ["a", "bé", ""], STRING)
    w.add_array("llama.attention.head_count", [4, 2], I32)
    data = {"x.weight": np.arange(96, dtype=np.float32).reshape(3, 32), "y.weight": np.ones(5, np.float16)}
    w.add_tensor_info("x.weight", (3, 32), "f32")
    w.add_tensor_info("y.weight", (5,), "f16")
    w.open()
    for k, v in data.items():
        w.write_tensor(k, v)
    w.close()
    r = gguf.GGUFReader(str(tmp_path / "w.gguf"))
    assert r.fields["llama.block_count"].contents() == 2
    assert r.fields["tokenizer.ggml.tokens"].contents() == ["a", "bé", ""]
    assert r.fields["llama.attention.head_count"].contents() == [4, 2]
    assert r.fields["tokenizer.ggml.add_bos_token"].contents() is True
    t = {t.name: t for t in r.tensors}
    assert np.array_equal(np.asarray(t["x.weight"].data).reshape(3, 32), data["x.weight"])
    assert np.array_equal(np.asarray(t["y.weight"].data), data["y.weight"])
    assert all(t.data_offset % 32 == 0 for t in r.tensors)
