"""slmctl/io/np_tensors.py: safetensors tensors read as float32 numpy arrays without torch."""

from __future__ import annotations

import numpy as np


def test_bf16_widens_bit_exactly_whole_and_by_rows(tmp_path):
    import torch
    from safetensors.torch import save_file

    from slmctl.io.artifact import open_artifact
    from slmctl.io.np_tensors import load_float32

    # every bf16 bit pattern (NaNs and infinities included), as a 256 x 256 tensor
    t = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(256, 256)
    save_file({"w": t}, str(tmp_path / "m.safetensors"))
    lazy = open_artifact(tmp_path / "m.safetensors").tensors["w"]
    want = t.float().numpy().view(np.uint32)
    assert np.array_equal(load_float32(lazy).view(np.uint32), want)
    assert np.array_equal(load_float32(lazy, rows=(17, 42)).view(np.uint32), want[17:42])


def test_row_reader_and_streamed_encoding_equal_the_whole_tensor(tmp_path, monkeypatch):
    """The exporter's file path (RowReader into reused buffers, each encoded slice handed to the writer at its
    offset) gives the bytes the whole-tensor path gives, for every stored float dtype and GGUF type, with slices that do not
    divide the rows."""
    import torch
    from safetensors.torch import save_file

    from slmctl.io.artifact import open_artifact
    from slmctl.io.np_tensors import RowReader, load_float32
    from slmctl.pipelines.export import gguf_build

    g = torch.Generator().manual_seed(0)
    base = torch.randn(67, 96, generator=g) * 0.05
    tensors = {"bf16": base.to(torch.bfloat16), "f16": base.to(torch.float16), "f32": base.clone(),
               "vec": torch.randn(1000, generator=g)}
    tensors["f32"][3, 5] = float("inf")
    save_file(tensors, str(tmp_path / "m.safetensors"))
    art = open_artifact(tmp_path / "m.safetensors")
    monkeypatch.setattr(gguf_build, "FILE_CHUNK", 7 * 96 + 5)  # 7 rows a slice: 67 = 9 x 7 + 4
    for name in ("bf16", "f16", "f32"):
        lazy = art.tensors[name]
        reader = RowReader.of(lazy)
        assert reader is not None
        whole = load_float32(lazy)
        with open(reader.path, "rb") as f:
            buf = np.empty(whole.size, dtype=np.float32)
            assert np.array_equal(reader.read(f, 5, 11, buf), whole[5:11])
        for gtype in ("f32", "f16", "bf16", "q8_0", "q4_0"):
            got = _streamed(gguf_build, reader, tuple(whole.shape), gtype)
            want = gguf_build._encode_rows(lambda i, j: whole[i:j], tuple(whole.shape), gtype)
            assert got == want.tobytes(), (name, gtype)
    vec = art.tensors["vec"]
    got = _streamed(gguf_build, RowReader.of(vec), (1000,), "f32")
    assert got == load_float32(vec).tobytes()


def _streamed(gguf_build, reader, shape, gtype) -> bytes:
    """What _stream_file hands the writer, put together at the offsets it gives."""
    from slmctl.io.gguf_writer import tensor_nbytes

    out = bytearray(tensor_nbytes(shape, gtype))

    def write(at, data):
        b = np.ascontiguousarray(data).tobytes()
        out[at:at + len(b)] = b

    gguf_build._stream_file(reader, shape, gtype, write)
    return bytes(out)
