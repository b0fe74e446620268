import struct

import numpy as np
import pytest

from slmctl.errors import FormatError, UnsupportedError
from slmctl.io import gguf as gguf_io


def _tiny_gguf(path, qtype="F32"):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    data = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) / 100
    if qtype == "F32":
        w.add_tensor("w", data)
    else:
        qt = getattr(gguf.GGMLQuantizationType, qtype)
        w.add_tensor("w", gguf.quants.quantize(data, qt), raw_dtype=qt)
    w.add_tensor("v", np.ones(32, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return data


def test_reads_metadata_and_tensors(tmp_path):
    p = tmp_path / "m.gguf"
    data = _tiny_gguf(p)
    g = gguf_io.read(p)
    assert g.metadata["general.architecture"] == "llama"
    assert g.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"]
    lt = g.lazy_tensors()
    assert lt["w"].shape == (64, 32)
    np.testing.assert_array_equal(lt["w"].load().numpy(), data)
    assert lt["v"].load().dtype.is_floating_point


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_dequantises_like_the_gguf_package(tmp_path, qtype):
    import gguf

    p = tmp_path / "q.gguf"
    data = _tiny_gguf(p, qtype)
    got = gguf_io.read(p).lazy_tensors()["w"].load().numpy()
    qt = getattr(gguf.GGMLQuantizationType, qtype)
    ref = gguf.quants.dequantize(gguf.quants.quantize(data, qt), qt)
    np.testing.assert_array_equal(got, ref)


def _patch(p, offset, fmt, value):
    b = bytearray(p.read_bytes())
    struct.pack_into(fmt, b, offset, value)
    p.write_bytes(bytes(b))


def test_huge_tensor_count(tmp_path):
    p = tmp_path / "m.gguf"
    _tiny_gguf(p)
    _patch(p, 8, "<Q", 2**40)
    with pytest.raises(FormatError, match="claims"):
        gguf_io.read(p)


def test_huge_string_length(tmp_path):
    p = tmp_path / "m.gguf"
    _tiny_gguf(p)
    _patch(p, 24, "<Q", 2**63 - 5)  # the first key's length
    with pytest.raises(FormatError, match="past the end"):
        gguf_io.read(p)


def test_offsets_beyond_end(tmp_path):
    p = tmp_path / "m.gguf"
    _tiny_gguf(p)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(FormatError, match="beyond the end"):
        gguf_io.read(p)


def test_bad_version_and_magic(tmp_path):
    p = tmp_path / "m.gguf"
    _tiny_gguf(p)
    _patch(p, 4, "<I", 99)
    with pytest.raises(UnsupportedError, match="version 99"):
        gguf_io.read(p)
    p.write_bytes(b"GGXF" + p.read_bytes()[4:])
    with pytest.raises(FormatError, match="magic"):
        gguf_io.read(p)


def test_unknown_tensor_type(tmp_path):
    p = tmp_path / "m.gguf"
    _tiny_gguf(p)
    g = gguf_io.read(p)
    b = p.read_bytes()
    # the type id follows the name, n_dims and dims of tensor "w": find it by its name
    i = b.index(b"\x01\x00\x00\x00\x00\x00\x00\x00w") + 9
    _patch(p, i + 4 + 16, "<I", 250)
    with pytest.raises(UnsupportedError, match="unknown type id 250"):
        gguf_io.read(p)
    assert g.tensors["w"].type_name == "F32"


def test_patch_header_overwrites_in_place(tmp_path):
    import numpy as np
    import pytest

    from slmctl.io.gguf import read
    from slmctl.io.gguf_writer import GGUFStreamWriter, GGUFWriterError

    path = tmp_path / "p.gguf"
    w = GGUFStreamWriter(path, "llama")
    w.add_string("slmctl.x", "AAAA-pending")
    w.add_string("slmctl.y", "twice twice")
    w.add_tensor_info("t", (4,), "f32")
    w.open()
    w.write_tensor("t", np.arange(4, dtype=np.float32))
    with pytest.raises(GGUFWriterError, match="bytes cannot replace"):
        w.patch_header("AAAA-pending", "short")
    with pytest.raises(GGUFWriterError, match="does not occur"):
        w.patch_header("absent!", "present")
    with pytest.raises(GGUFWriterError, match="more than once"):
        w.patch_header("twice", "thrce")
    w.patch_header("AAAA-pending", "BBBB-done!!!")
    w.close()
    g = read(path)
    assert g.metadata["slmctl.x"] == "BBBB-done!!!"
    assert g.lazy_tensors()["t"].load().tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("last_streamed", [False, True])
def test_write_at_streams_tensors_out_of_order_with_the_same_bytes(tmp_path, last_streamed):
    """Tensors written slice by slice with write_at (any order, from threads) and committed with filled() give
    the file that write_tensor gives; the padding of a streamed tensor is written even when it is the last one."""
    from concurrent.futures import ThreadPoolExecutor

    from slmctl.io.gguf_writer import GGUFStreamWriter, GGUFWriterError

    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((6, 10)).astype(np.float16), "b": rng.standard_normal(7).astype(np.float32),
              "c": rng.standard_normal((5, 3)).astype(np.float16)}  # odd byte counts: padding after each

    def build(path, streamed):
        w = GGUFStreamWriter(path, "llama")
        for n, a in arrays.items():
            w.add_tensor_info(n, a.shape, "f16" if a.dtype == np.float16 else "f32")
        w.open()
        with ThreadPoolExecutor(2) as ex:  # later tensors first, row by row
            list(ex.map(lambda nr: w.write_at(nr[0], nr[1] * arrays[nr[0]][0:1].nbytes, arrays[nr[0]][nr[1]:nr[1] + 1]),
                        [(n, r) for n in reversed(list(streamed)) for r in range(len(arrays[n]))]))
        for n, a in arrays.items():
            w.filled(n) if n in streamed else w.write_tensor(n, a)
        w.close()
        return path.read_bytes()

    plain = build(tmp_path / "plain.gguf", ())
    streamed = build(tmp_path / "s.gguf", ("a", "c") if last_streamed else ("a",))
    assert streamed == plain
    w = GGUFStreamWriter(tmp_path / "x.gguf", "llama")
    w.add_tensor_info("a", (2, 4), "f32")
    w.open()
    with pytest.raises(GGUFWriterError, match="outside"):
        w.write_at("a", 20, np.zeros(4, dtype=np.float32))
    with pytest.raises(GGUFWriterError, match="declared"):
        w.filled("b")
    w.abort()
