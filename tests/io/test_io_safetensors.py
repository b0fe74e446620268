import json
import struct

import pytest
import torch

from slmctl.errors import FormatError
from slmctl.io import safetensors as st


def _write_raw(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_sharded_writer_roundtrip_matches_reference_reader(tmp_path):
    from safetensors.torch import load_file

    tensors = {f"t{i}": torch.randn(64, 16, dtype=torch.float32) for i in range(5)}
    tensors["b"] = torch.randn(7).to(torch.bfloat16)
    tensors["i"] = torch.arange(10, dtype=torch.int32)
    paths = st.write_tensors(tmp_path, tensors.items(), max_shard_size=8000, metadata={"k": "v"})
    assert len(paths) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    got = {}
    for p in paths:
        got.update(load_file(p))  # the reference implementation reads what we wrote
    for name, t in tensors.items():
        assert torch.equal(got[name], t), name
    # our reader agrees too, and keeps the metadata
    lazy, meta = st.open_file(paths[0])
    assert meta["k"] == "v"
    for name, lt in lazy.items():
        assert torch.equal(lt.load(), tensors[name])
    assert not list(tmp_path.glob(".shard*"))  # scratch files are gone


@pytest.mark.parametrize("header,data,needle", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "outside the data"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16, "needs 16"),
    ({"a": {"dtype": "X9", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}}, b"\0" * 16, "bad shape"),
    ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, b"\0" * 16, "needs"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, b"\0" * 24, "overlaps"),
    ({"__metadata__": {"a": 1}}, b"", "__metadata__"),
])
def test_hostile_headers_are_rejected(tmp_path, header, data, needle):
    p = tmp_path / "bad.safetensors"
    _write_raw(p, header, data)
    with pytest.raises(FormatError, match=needle):
        st.open_file(p)


def test_header_length_beyond_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(FormatError, match="past the end"):
        st.open_file(p)


def test_truncated_file(tmp_path):
    p = tmp_path / "t.safetensors"
    st.write_tensors(tmp_path, [("a", torch.ones(100))], single_file=p)
    p.write_bytes(p.read_bytes()[:-50])
    with pytest.raises(FormatError, match="outside the data"):
        st.open_file(p)


def test_parse_size():
    assert st.parse_size("2GB") == 2 << 30
    assert st.parse_size("500MB") == 500 << 20
    assert st.parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert st.parse_size("1234") == 1234
    from slmctl.errors import UsageError

    with pytest.raises(UsageError):
        st.parse_size("lots")


def test_sharded_writer_with_expected_names_renames_instead_of_copying(tmp_path, monkeypatch):
    """With the tensor names known, each shard's header goes into room reserved at the head of its scratch file
    (padded with spaces) and the scratch is renamed into place: the same tensors and metadata as the copying
    path, read back by the reference loader; a header that outgrows the room falls back to the copy."""
    import torch
    from safetensors import safe_open

    from slmctl.io import safetensors as st

    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.w": torch.randn(33, 17, generator=g).to(torch.bfloat16) for i in range(5)}
    tensors["scalar"] = torch.tensor(3.0)
    copies = []
    real_copy = st.shutil.copyfileobj
    monkeypatch.setattr(st.shutil, "copyfileobj", lambda *a, **k: (copies.append(1), real_copy(*a, **k)))
    outs = {}
    for kind, expected, meta in (("plain", None, {"k": "v"}), ("room", list(tensors), {"k": "v"}),
                                 ("outgrown", ["x"], {"k": "v"})):
        folder = tmp_path / kind
        folder.mkdir()
        copies.clear()
        with st.ShardedWriter(folder, max_shard_size=2500, metadata=meta, expected=expected) as w:
            for name, t in tensors.items():
                w.add(name, t)
            if kind == "outgrown":
                w.meta["big"] = "x" * (200 << 10)  # provenance completed at the end, larger than the room
        files = sorted(folder.glob("model-*.safetensors"))
        assert len(files) > 1 and not list(folder.glob(".shard*"))
        assert (len(copies) == 0) == (kind == "room"), kind
        got = {}
        for f in files:
            with safe_open(str(f), "pt") as fh:
                assert fh.metadata()["k"] == "v"
                got.update({k: fh.get_tensor(k) for k in fh.keys()})
            n = int.from_bytes(f.read_bytes()[:8], "little")
            assert (8 + n) % 8 == 0
        outs[kind] = got
    for kind in ("room", "outgrown"):
        assert outs[kind].keys() == tensors.keys()
        assert all(torch.equal(outs[kind][k], tensors[k]) for k in tensors)
