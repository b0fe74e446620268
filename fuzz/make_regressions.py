"""Write the minimal inputs of the crashes the fuzzer found into tests/regressions/.

    python fuzz/make_regressions.py

Each input is the smallest file (or model folder) that crashed slmctl before its fix; manifest.json
says what slmctl must do with it now: refuse it with a message containing ``needle``, or accept it
and read, inspect and export it correctly. tests/fuzz/test_fuzz_regressions.py replays them all.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "regressions"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import STRING, ARRAY, GKV, GSpec, GStr, GTensor, gguf_serialise  # noqa: E402


def st_bytes(header: dict | bytes, data: bytes = b"", pad_to: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    if pad_to is not None:
        raw += b" " * (pad_to - len(raw))
    return struct.pack("<Q", len(raw)) + raw + data


def gguf_bytes(kvs: list[GKV], tensors: list[GTensor], data: bytes = b"") -> bytes:
    return gguf_serialise(GSpec(kvs=[GKV(GStr(b"general.architecture"), STRING, GStr(b"llama"))] + kvs
                                if not any(k.key.text == b"general.architecture" for k in kvs) else kvs,
                                tensors=tensors, data=data))


def onnx_model(inits, folder: Path, name: str = "model.onnx", patch: tuple[bytes, bytes] | None = None) -> None:
    import onnx
    from onnx import TensorProto, helper

    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    raw = model.SerializeToString()
    if patch:
        assert patch[0] in raw
        raw = raw.replace(patch[0], patch[1])
    (folder / name).write_bytes(raw)


def external(name: str, location: str, dims=(2,)):
    import onnx
    from onnx import TensorProto

    t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims), data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    return t


def main() -> None:
    from onnx import TensorProto, helper, numpy_helper

    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    man: dict[str, dict] = {}

    def add(name: str, content: bytes, outcome: str, needle: str, found: str) -> None:
        (OUT / name).write_bytes(content)
        man[name] = {"outcome": outcome, "needle": needle, "was": found}

    # ---- safetensors
    add("st-deep-nesting.safetensors", st_bytes(b"[" * 5000 + b"]" * 5000), "rejected", "nested too deep",
        "RecursionError from json.loads in read_header")
    add("st-huge-integer.safetensors", st_bytes(b'{"a":' + b"1" * 5000 + b"}"), "rejected", "not valid JSON",
        "ValueError (integer string conversion limit) from json.loads in read_header")
    add("st-scalar-tensor.safetensors", st_bytes({"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}},
                                                 struct.pack("<f", 1.5)), "accepted", "",
        "RuntimeError in ShardedWriter.add on export: a 0-d tensor cannot be viewed as bytes")
    add("st-bad-provenance.safetensors",
        st_bytes({"__metadata__": {"slmctl.provenance": '{"versions": "x"}'},
                  "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\x01"), "accepted", "",
        "AttributeError in api.inspect: provenance 'versions' was a string")
    add("st-header-length-0x80.safetensors",
        st_bytes({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\x07", pad_to=128), "accepted", "",
        "a valid file whose header length starts with byte 0x80 was sniffed as a pickle and refused")

    # ---- GGUF
    add("gguf-architecture-array.gguf",
        gguf_bytes([GKV(GStr(b"general.architecture"), ARRAY, ("array", 4, None, [1, 2]))],
                   [GTensor(GStr(b"w"), [1], 0, 0)], b"\0" * 4), "rejected", "general.architecture",
        "ValueError in `slmctl inspect` rendering an array as the architecture")
    add("gguf-empty-bf16.gguf", gguf_bytes([], [GTensor(GStr(b"w"), [0], 30, 0)]), "accepted", "",
        "ValueError from torch.frombuffer on an empty BF16 tensor")
    add("gguf-empty-q4_0.gguf", gguf_bytes([], [GTensor(GStr(b"w"), [32, 0], 2, 0)]), "accepted", "",
        "ValueError reshaping an empty Q4_0 tensor into rows")

    # ---- ONNX (folders)
    def add_dir(name: str, outcome: str, needle: str, found: str) -> None:
        man[name] = {"outcome": outcome, "needle": needle, "was": found}

    t = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    t.data_type = 99
    onnx_model([t], OUT / "onnx-unknown-dtype")
    add_dir("onnx-unknown-dtype", "rejected", "unknown ONNX data type", "KeyError from tensor_dtype_to_np_dtype")

    onnx_model([numpy_helper.from_array(np.ones([1] * 17, dtype=np.float32), "w")], OUT / "onnx-17-dims")
    add_dir("onnx-17-dims", "accepted", "",
            "export wrote a 17-dimension tensor that slmctl's own safetensors reader refused (8 at most)")

    onnx_model([numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")], OUT / "onnx-export")
    add_dir("onnx-export", "accepted", "", "ONNX tensors loaded as None: `export --format safetensors` crashed")

    onnx_model([external("w", "XXXX")], OUT / "onnx-location-not-utf8", patch=(b"XXXX", b"\xff\xfe\xfd\xfc"))
    add_dir("onnx-location-not-utf8", "rejected", "no usable location",
            "TypeError: protobuf returned the location as bytes")

    onnx_model([external("w", "a" * 5000)], OUT / "onnx-location-too-long")
    add_dir("onnx-location-too-long", "rejected", "cannot use external data",
            "OSError ENAMETOOLONG from Path.is_symlink")

    big = external("w", "w.bin", dims=(2**40,))
    onnx_model([big], OUT / "onnx-external-huge-shape")
    (OUT / "onnx-external-huge-shape" / "w.bin").write_bytes(b"\0" * 16)
    add_dir("onnx-external-huge-shape", "accepted", "",
            "MemoryError: the loader read shape-many bytes (4 TiB) from a 16-byte external file")

    (OUT / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(man)} regression inputs to {OUT}")


if __name__ == "__main__":
    main()
