"""Hostile inputs, one test each: files built to crash a reader, exhaust memory, read outside the
model folder or run code. Each must end in a clear SlmctlError (CLI: exit 1, ``error: ...``, no
traceback) before anything dangerous happens.

tests/io/test_io_safetensors.py and tests/io/test_io_gguf.py hold the basic cases; these extend them.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slmctl.errors import FormatError, InputError, OutputError, SlmctlError

ROOT = Path(__file__).resolve().parents[2]

from fuzz.harness import ARRAY, STRING, GKV, GSpec, GStr, GTensor, gguf_serialise  # noqa: E402


def _clean_exit_1(cli, *args: str, needle: str) -> str:
    code, out, err = cli(*args)
    assert code == 1, err
    assert err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err and "internal error" not in err and out == ""
    return err


# --------------------------------------------------------------------------- safetensors
def _st(path: Path, header, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_st_header_length_near_2_64(tmp_path, cli):
    p = _st(tmp_path / "m.safetensors", {}, length=2**64 - 1)
    _clean_exit_1(cli, "inspect", str(p), needle="past the end of the file")


def test_st_shape_whose_byte_size_wraps_to_zero_in_64_bits(tmp_path):
    # 2^32 * 2^32 * 4 bytes = 2^66, which a C reader computing in uint64 would see as 0 bytes
    p = _st(tmp_path / "m.safetensors", {"a": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}})
    with pytest.raises(FormatError, match="needs 73786976294838206464"):
        from slmctl.io.safetensors import open_file

        open_file(p)


def test_st_offsets_far_beyond_the_file(tmp_path, cli):
    p = _st(tmp_path / "m.safetensors", {"a": {"dtype": "U8", "shape": [2**50], "data_offsets": [2**62, 2**62 + 2**50]}},
            b"\0" * 8)
    _clean_exit_1(cli, "inspect", str(p), needle="outside the data")


def test_st_negative_and_reversed_offsets(tmp_path):
    from slmctl.io.safetensors import open_file

    for offs in ([-8, 0], [8, 0], [0, -1]):
        p = _st(tmp_path / "m.safetensors", {"a": {"dtype": "U8", "shape": [8], "data_offsets": offs}}, b"\0" * 16)
        with pytest.raises(FormatError, match="outside the data"):
            open_file(p)


def test_st_tensor_nested_inside_another(tmp_path):
    from slmctl.io.safetensors import open_file

    p = _st(tmp_path / "m.safetensors", {"big": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]},
                                         "small": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}, b"\0" * 16)
    with pytest.raises(FormatError, match="overlaps"):
        open_file(p)


def test_st_two_tensors_sharing_bytes_exactly(tmp_path):
    from slmctl.io.safetensors import open_file

    p = _st(tmp_path / "m.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                         "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(FormatError, match="overlaps"):
        open_file(p)


def test_st_json_bombs_are_refused(tmp_path, cli):
    for raw, needle in ((b"[" * 100000 + b"]" * 100000, "nested too deep"),
                        (b'{"a":' + b"9" * 10000 + b"}", "not valid JSON"),
                        (b"\xff" * 64, "not valid JSON")):
        p = _st(tmp_path / "m.safetensors", raw)
        _clean_exit_1(cli, "inspect", str(p), needle=needle)


def test_st_huge_claims_stay_small_in_memory(tmp_path):
    """Every hostile header above, read under a 1 GiB address-space limit, in a fresh process."""
    files = []
    for i, (hdr, data) in enumerate([
        ({"a": {"dtype": "F64", "shape": [2**26, 2**26], "data_offsets": [0, 2**55]}}, b""),
        ({"a": {"dtype": "U8", "shape": [2**40], "data_offsets": [0, 2**40]}}, b"\0" * 64),
        ({f"t{k}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for k in range(50000)}, b""),
    ]):
        files.append(str(_st(tmp_path / f"m{i}.safetensors", hdr, data)))
    _under_1gib(files)


def _under_1gib(files: list[str]) -> None:
    code = (
        "import resource, sys\n"
        "from slmctl.io.artifact import open_artifact\n"
        "from slmctl.errors import SlmctlError\n"
        "import torch\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "for f in sys.argv[1:]:\n"
        "    try:\n"
        "        art = open_artifact(f)\n"
        "        for t in art.tensors.values():\n"
        "            t.load()\n"
        "        print('ok', f)\n"
        "    except SlmctlError as e:\n"
        "        print('refused', f)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MemoryError" not in r.stderr
    assert len(r.stdout.splitlines()) == len(files)


# --------------------------------------------------------------------------- GGUF
def _gguf(path: Path, spec: GSpec) -> Path:
    path.write_bytes(gguf_serialise(spec))
    return path


def _arch():
    return GKV(GStr(b"general.architecture"), STRING, GStr(b"llama"))


def test_gguf_string_length_near_2_63_in_a_value(tmp_path, cli):
    # the first key's length is covered in test_io_gguf.py; this one lies in a string *value*
    p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[GKV(GStr(b"general.architecture"), STRING, GStr(b"llama", 2**63 - 1))]))
    _clean_exit_1(cli, "inspect", str(p), needle="past the end of the file")


def test_gguf_string_length_near_2_63_inside_an_array(tmp_path):
    from slmctl.io import gguf as gguf_io

    toks = ("array", STRING, None, [GStr(b"a"), GStr(b"b", 2**63 + 7), GStr(b"c")])
    p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[_arch(), GKV(GStr(b"tokenizer.ggml.tokens"), ARRAY, toks)]))
    with pytest.raises(FormatError, match="past the end"):
        gguf_io.read(p)


def test_gguf_array_count_near_2_62(tmp_path):
    from slmctl.io import gguf as gguf_io

    for etype in (STRING, 10, ARRAY):  # strings, u64 and nested arrays: each checked before allocating
        arr = ("array", etype, 2**62, [])
        p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[_arch(), GKV(GStr(b"x"), ARRAY, arr)]))
        with pytest.raises(FormatError, match="past the end"):
            gguf_io.read(p)


def test_gguf_metadata_count_near_2_40_and_2_64(tmp_path):
    from slmctl.io import gguf as gguf_io

    for n in (2**40, 2**64 - 1):
        p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[_arch()], n_kv=n))
        with pytest.raises(FormatError, match="claims"):
            gguf_io.read(p)


def test_gguf_tensor_count_near_2_40_cli(tmp_path, cli):
    p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[_arch()], n_tensors=2**40 + 3))
    _clean_exit_1(cli, "inspect", str(p), needle="claims")


def test_gguf_tensor_offset_beyond_eof(tmp_path, cli):
    for off in (2**63, 2**64 - 32, 4096):
        t = GTensor(GStr(b"w"), [8], 0, off)
        p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[_arch()], tensors=[t], data=b"\0" * 32))
        _clean_exit_1(cli, "inspect", str(p), needle="beyond the end")


def test_gguf_dims_whose_product_wraps_in_64_bits(tmp_path):
    from slmctl.io import gguf as gguf_io

    # 2^32 * 2^32 elements = 2^64, which wraps to 0 in uint64 arithmetic
    t = GTensor(GStr(b"w"), [2**32, 2**32], 0, 0)
    p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[_arch()], tensors=[t], data=b"\0" * 32))
    with pytest.raises(FormatError, match="beyond the end"):
        gguf_io.read(p)


def test_gguf_arrays_nested_deep(tmp_path):
    from slmctl.io import gguf as gguf_io

    inner = ("array", 4, None, [1])
    for _ in range(50):
        inner = ("array", ARRAY, None, [inner])
    p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[_arch(), GKV(GStr(b"x"), ARRAY, inner)]))
    with pytest.raises(FormatError, match="nested too deep"):
        gguf_io.read(p)


def test_gguf_known_keys_with_wrong_types(tmp_path, cli):
    for key, kv in (("general.architecture", GKV(GStr(b"general.architecture"), 4, 7)),
                    ("tokenizer.ggml.tokens", GKV(GStr(b"tokenizer.ggml.tokens"), 4, 7)),
                    ("general.file_type", GKV(GStr(b"general.file_type"), STRING, GStr(b"q4")))):
        p = _gguf(tmp_path / "m.gguf", GSpec(kvs=[kv] if key == "general.architecture" else [_arch(), kv]))
        _clean_exit_1(cli, "inspect", str(p), needle=key)


def test_gguf_hostile_files_stay_small_in_memory(tmp_path):
    files = []
    specs = [GSpec(kvs=[_arch()], n_tensors=2**40), GSpec(kvs=[_arch(), GKV(GStr(b"x"), ARRAY, ("array", 10, 2**61, []))]),
             GSpec(kvs=[_arch()], tensors=[GTensor(GStr(b"w"), [2**40, 2**40, 2**40, 2**40], 2, 0)], data=b"\0" * 64),
             GSpec(kvs=[_arch(), GKV(GStr(b"x"), STRING, GStr(b"", 2**63 - 1))])]
    for i, s in enumerate(specs):
        files.append(str(_gguf(tmp_path / f"m{i}.gguf", s)))
    _under_1gib(files)


# --------------------------------------------------------------------------- ONNX external data
@pytest.fixture
def secret(tmp_path) -> Path:
    p = tmp_path / "secret.bin"
    p.write_bytes(b"TOP-SECRET" * 10)
    return p


def _onnx_folder(folder: Path, location: str) -> Path:
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    t = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="length", value="16")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [t])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(folder / "model.onnx"))
    return folder


class _Opens:
    """Records every file the process opens (Python audit hook), to prove nothing was read."""

    paths: list[str] = []
    on = False

    @classmethod
    def hook(cls, event, args):
        if cls.on and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            cls.paths.append(os.fsdecode(args[0]))


sys.addaudithook(_Opens.hook)


def _refused_before_reading(cli, folder: Path, secret: Path, needle: str) -> None:
    from slmctl.io.artifact import open_artifact

    _Opens.paths, _Opens.on = [], True
    try:
        with pytest.raises(InputError, match=needle):
            open_artifact(folder)
        err = _clean_exit_1(cli, "inspect", str(folder), needle="refused")
    finally:
        _Opens.on = False
    assert not any(Path(p).resolve() == secret.resolve() for p in _Opens.paths), _Opens.paths
    assert "TOP-SECRET" not in err


def test_onnx_external_data_parent_traversal(tmp_path, secret, cli):
    folder = _onnx_folder(tmp_path / "a" / "b" / "model", "../../../secret.bin")
    _refused_before_reading(cli, folder, secret, "leaves the model folder")


def test_onnx_external_data_traversal_hidden_in_a_subpath(tmp_path, secret, cli):
    folder = _onnx_folder(tmp_path / "model", "sub/../../secret.bin")
    (folder / "sub").mkdir()
    _refused_before_reading(cli, folder, secret, "leaves the model folder")


def test_onnx_external_data_absolute_path(tmp_path, secret, cli):
    folder = _onnx_folder(tmp_path / "model", str(secret))
    _refused_before_reading(cli, folder, secret, "absolute path")


def test_onnx_external_data_symlink_out_of_the_folder(tmp_path, secret, cli):
    folder = _onnx_folder(tmp_path / "model", "weights.bin")
    (folder / "weights.bin").symlink_to(secret)
    _refused_before_reading(cli, folder, secret, "symbolic link out of the model folder")


def test_onnx_external_data_through_a_linked_subfolder(tmp_path, secret, cli):
    folder = _onnx_folder(tmp_path / "model", "data/secret.bin")
    (folder / "data").symlink_to(tmp_path)
    _refused_before_reading(cli, folder, secret, "symbolic link out of the model folder")


def test_onnx_external_data_in_a_constant_node_is_checked_too(tmp_path, secret, cli):
    import onnx
    from onnx import TensorProto, helper

    folder = _onnx_folder(tmp_path / "model", "w.bin")
    (folder / "w.bin").write_bytes(b"\0" * 16)
    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    c = onnx.TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL)
    c.external_data.add(key="location", value="../secret.bin")
    m.graph.node.append(helper.make_node("Constant", [], ["k"], value=c))
    (folder / "model.onnx").write_bytes(m.SerializeToString())
    _refused_before_reading(cli, folder, secret, "leaves the model folder")


def test_onnx_external_data_inside_the_folder_is_read(tmp_path, cli):
    """The checks refuse only what leaves the folder: a link inside it, and a subfolder, are fine."""
    from slmctl.io.artifact import open_artifact

    folder = _onnx_folder(tmp_path / "model", "data/w.bin")
    (folder / "data").mkdir()
    (folder / "data" / "real.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (folder / "data" / "w.bin").symlink_to("real.bin")
    art = open_artifact(folder)
    assert art.tensors["w"].load().tolist() == [0.0, 1.0, 2.0, 3.0]
    code, out, err = cli("export", str(folder), "--format", "safetensors", "-o", str(tmp_path / "w.safetensors"))
    assert code == 0, err
    from safetensors.torch import load_file

    assert load_file(tmp_path / "w.safetensors")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_onnx_external_data_offset_and_length_checked(tmp_path, cli):
    import onnx

    folder = _onnx_folder(tmp_path / "model", "w.bin")
    (folder / "w.bin").write_bytes(b"\0" * 16)
    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for value, needle in (("-5", "not a non-negative integer"), (str(2**63), "beyond the end")):
        del m.graph.initializer[0].external_data[:]
        m.graph.initializer[0].external_data.add(key="location", value="w.bin")
        m.graph.initializer[0].external_data.add(key="offset", value=value)
        (folder / "model.onnx").write_bytes(m.SerializeToString())
        _clean_exit_1(cli, "inspect", str(folder), needle=needle)


# --------------------------------------------------------------------------- pickle
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


@pytest.mark.parametrize("name", ["model.safetensors", "model.gguf", "model.onnx", "weights.pkl", "model.ckpt"])
def test_pickle_in_disguise_is_never_unpickled(tmp_path, cli, name):
    """test_cli.py covers pytorch_model.bin; a payload under other names is not run either."""
    _Evil.marker = str(tmp_path / "pwned")
    p = tmp_path / name
    p.write_bytes(pickle.dumps({"w": _Evil()}))
    code, out, err = cli("inspect", str(p))
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    code, out, err = cli("export", str(p), "--format", "safetensors", "-o", str(tmp_path / "o.safetensors"))
    assert code == 1 and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "o.safetensors").exists()


def test_pickle_folder_with_config_is_refused(tmp_path, cli):
    _Evil.marker = str(tmp_path / "pwned")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Evil()}))
    _clean_exit_1(cli, "export", str(folder), "-o", str(tmp_path / "out"), needle="--allow-pickle")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- output symlinks
@pytest.fixture
def small_st(tmp_path) -> Path:
    import torch

    from slmctl.io.safetensors import write_tensors

    p = tmp_path / "in.safetensors"
    write_tensors(tmp_path, [("w", torch.arange(6.0))], single_file=p)
    return p


@pytest.mark.parametrize("force", [False, True])
def test_output_file_symlink_is_refused(tmp_path, small_st, cli, force):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / "out.safetensors"
    link.symlink_to(victim)
    args = ["export", str(small_st), "--format", "safetensors", "-o", str(link)] + (["--force"] if force else [])
    _clean_exit_1(cli, *args, needle="symbolic link")
    assert victim.read_text() == "precious" and link.is_symlink()


def test_dangling_output_symlink_is_refused(tmp_path, small_st, cli):
    link = tmp_path / "out.safetensors"
    link.symlink_to(tmp_path / "elsewhere" / "new.safetensors")
    _clean_exit_1(cli, "export", str(small_st), "--format", "safetensors", "-o", str(link), needle="symbolic link")
    assert not (tmp_path / "elsewhere").exists()


def test_output_dir_symlink_with_force_leaves_target_untouched(tmp_path, tiny_llama, cli):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    link = tmp_path / "out"
    link.symlink_to(target)
    _clean_exit_1(cli, "export", str(tiny_llama), "-o", str(link), "--force", needle="symbolic link")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_provenance_sidecar_symlink_is_not_followed(tmp_path, small_st, cli):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "out.safetensors.slmctl.json").symlink_to(victim)
    code, _, err = cli("export", str(small_st), "--format", "safetensors", "-o", str(tmp_path / "out.safetensors"))
    assert code == 0, err
    assert victim.read_text() == "precious"
    sidecar = tmp_path / "out.safetensors.slmctl.json"
    assert not sidecar.is_symlink() and '"verb": "export"' in sidecar.read_text()
