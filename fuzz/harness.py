"""Structure-aware fuzzing of slmctl's readers: seeds, mutators and the oracle.

Each format has a *structured* description of a valid tiny file (the safetensors header as a dict,
the GGUF fields as a list, the ONNX model as a protobuf). A mutator changes that structure — counts,
lengths, offsets, dtypes, shapes — and then, sometimes, the serialised bytes too. The oracle feeds
the result to ``open_artifact`` and, when it is accepted, to ``slmctl inspect`` and
``slmctl export`` in-process, and says whether the run ended well:

* the input was refused with a SlmctlError (the CLI: exit 1, ``error: ...`` on stderr), or
* it was accepted, and every tensor loads with the shape and dtype the header announced, and the
  export reads back byte for byte.

Anything else (another exception, "internal error", an export that does not read back) is a crash.
Time and memory bounds are set by the driver (fuzz/run.py) around the worker process.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import random
import shutil
import struct
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

FORMATS = ("safetensors", "gguf", "onnx")

# numbers that break code: boundaries of the integer widths, and values near the file size
INTERESTING = [0, 1, 2, 7, 8, 31, 32, 33, 255, 256, 4095, 4096, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
               2**32, 2**40, 2**53, 2**53 + 1, 2**62, 2**63 - 5, 2**63 - 1, 2**63, 2**64 - 1]


def _interesting(rng: random.Random, near: int | None = None) -> int:
    r = rng.random()
    if near is not None and r < 0.4:
        return max(0, near + rng.randint(-9, 9))
    if r < 0.8:
        return rng.choice(INTERESTING)
    return rng.getrandbits(rng.choice((8, 16, 32, 64)))


def _flip_bytes(rng: random.Random, b: bytes, n: int | None = None) -> bytes:
    if not b:
        return b
    ba = bytearray(b)
    for _ in range(n or rng.randint(1, 4)):
        op = rng.random()
        i = rng.randrange(len(ba))
        if op < 0.5:
            ba[i] ^= 1 << rng.randrange(8)
        elif op < 0.7:
            ba[i] = rng.choice((0, 0xFF, 0x7F, 0x80))
        elif op < 0.85 and len(ba) >= i + 8:
            struct.pack_into("<Q", ba, i, _interesting(rng) & (2**64 - 1))
        elif op < 0.95 and len(ba) >= i + 4:
            struct.pack_into("<I", ba, i, _interesting(rng) & (2**32 - 1))
        else:
            del ba[i:i + rng.randint(1, 16)]
            if not ba:
                break
    return bytes(ba)


def _byte_tail(rng: random.Random, b: bytes) -> bytes:
    """Truncate, extend or leave the serialised bytes."""
    r = rng.random()
    if r < 0.15 and b:
        return b[:rng.randrange(len(b))]
    if r < 0.25:
        return b + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    return b


# --------------------------------------------------------------------------- safetensors
ST_DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
             "F8_E4M3", "F8_E5M2"]
ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
            "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def st_seed(rng: random.Random) -> tuple[dict, bytes]:
    """A valid header (as a dict) and data section with 2-4 tensors of assorted dtypes."""
    header: dict[str, Any] = {}
    data = bytearray()
    for i in range(rng.randint(2, 4)):
        dt = rng.choice(ST_DTYPES)
        shape = [rng.randint(0 if rng.random() < 0.1 else 1, 5) for _ in range(rng.randint(0, 3))]
        n = int(np.prod(shape)) * ST_SIZES[dt]
        blob = bytes(rng.getrandbits(8) for _ in range(n))
        if dt == "BOOL":
            blob = bytes(x & 1 for x in blob)
        header[f"model.layers.{i}.w"] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += blob
    header["__metadata__"] = {"format": "pt"}
    return header, bytes(data)


def st_serialise(header: Any, data: bytes, *, length: int | None = None, raw: bytes | None = None) -> bytes:
    raw = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", (len(raw) if length is None else length) & (2**64 - 1)) + raw + data


def _junk_value(rng: random.Random) -> Any:
    return rng.choice([None, True, False, -1, 1.5, "x", [], {}, [1, 2], 2**64, -(2**63), "F32", [[1]],
                       {"a": 1}, float("inf") if False else 1e308])


def st_mutate(rng: random.Random, header: dict, data: bytes) -> bytes:
    h = copy.deepcopy(header)
    names = [k for k in h if k != "__metadata__"]
    length = None
    raw = None
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(16)
        name = rng.choice(names) if names else None
        ent = h.get(name) if name else None
        if op == 0 and ent:  # dtype
            ent["dtype"] = rng.choice(ST_DTYPES + ["X9", "", "f32", None, 4, "F4", "I4"])
        elif op == 1 and ent:  # one dimension
            if ent["shape"]:
                ent["shape"][rng.randrange(len(ent["shape"]))] = rng.choice(
                    [_interesting(rng), -1, -(2**63), 1.0, True, "3", None, 2**53 - 1, 2**100])
            else:
                ent["shape"] = [_interesting(rng)]
        elif op == 2 and ent:  # rank
            ent["shape"] = [rng.randint(0, 3) for _ in range(rng.choice((0, 1, 8, 9, 64)))]
        elif op == 3 and ent:  # offsets
            i = rng.randrange(2)
            ent["data_offsets"][i] = rng.choice([_interesting(rng, len(data)), -1, -(2**63), 1.5, None, "0"])
        elif op == 4 and ent:  # offsets swapped / shifted onto a neighbour
            b, e = ent["data_offsets"]
            ent["data_offsets"] = rng.choice([[e, b], [b + 1, e + 1], [b - 1, e - 1], [0, e - b], [b], [b, e, e], []])
        elif op == 5 and ent:  # shape agrees with a lying size: keep bytes, change dtype and shape together
            ent["dtype"], ent["shape"] = "U8", [ent["data_offsets"][1] - ent["data_offsets"][0] + rng.choice((0, 1))]
        elif op == 6 and ent:  # entry is not an object / fields missing
            if rng.random() < 0.5:
                h[name] = _junk_value(rng)
            else:
                ent.pop(rng.choice(["dtype", "shape", "data_offsets"]), None)
        elif op == 7:  # metadata
            h["__metadata__"] = rng.choice([_junk_value(rng), {"slmctl.provenance": rng.choice([
                "[]", "{}", "1", "null", '{"inputs": 5}', '{"inputs": [1, "x", {"provenance": []}]}',
                '{"versions": "x", "recipe": 1}', '{"inputs": [{"provenance": {"inputs": [{"provenance": 3}]}}]}',
                "[" * 5000 + "]" * 5000, "{" * 100, '{"verb": {"a": 1}, "inputs": [{"ref": [1], "sha256": 5}]}'])}])
        elif op == 8:  # header length field
            length = rng.choice([_interesting(rng), 0, 1, 7, len(json.dumps(h)) + rng.randint(-8, 8)])
        elif op == 9:  # JSON that is not an object / deeply nested / huge numbers
            raw = rng.choice([b"[]", b"null", b"1", b'"x"', b"[" * 100000 + b"]" * 100000,
                              b'{"a": ' + b"[" * 50000 + b"]" * 50000 + b"}", b'{"a": 1' + b"0" * 5000 + b"}",
                              b'{"a": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], "data_offsets": [0, 4]}}',
                              b"\xff\xfe{}", b'{"a": NaN}', b'{"a": 1e999}', b'{"\\ud800": 1}'])
        elif op == 10 and name:  # duplicate a tensor under another name (overlap)
            h[name + ".copy"] = copy.deepcopy(h[name])
        elif op == 11:  # a tensor that covers everything, overlapping all
            h["all"] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}
        elif op == 12 and name:  # odd names
            h[rng.choice(["", "\x00", "a" * 10000, "__metadata__x", "../../x", "\ud800"])] = h.pop(name)
            names = [k for k in h if k != "__metadata__"]
        elif op == 13:  # drop the data
            data = data[:rng.randrange(len(data) + 1)]
        elif op == 14:  # whitespace padding / trailing garbage in header
            raw = json.dumps(h).encode() + rng.choice([b" " * 7, b"\x00", b"garbage", b"\n" * 9])
        elif op == 15:  # many tensors
            for i in range(rng.choice((100, 2000))):
                h[f"t{i}"] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    try:
        out = st_serialise(h, data, length=length, raw=raw)
    except (ValueError, TypeError, UnicodeEncodeError):
        out = st_serialise(None, data, length=length, raw=json.dumps(h, default=str).encode("utf-8", "replace"))
    if rng.random() < 0.2:
        out = _flip_bytes(rng, out)
    return _byte_tail(rng, out)


# --------------------------------------------------------------------------- GGUF
STRING, ARRAY = 8, 9
_G_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


@dataclass
class GStr:
    text: bytes
    length: int | None = None  # the declared length, when it lies

    def pack(self) -> bytes:
        n = len(self.text) if self.length is None else self.length
        return struct.pack("<Q", n & (2**64 - 1)) + self.text


@dataclass
class GKV:
    key: GStr
    vtype: int
    value: Any  # scalar, GStr, or ("array", etype, count|None, [items])


@dataclass
class GTensor:
    name: GStr
    dims: list[int]
    type_id: int
    offset: int
    n_dims: int | None = None


@dataclass
class GSpec:
    version: int = 3
    kvs: list[GKV] = field(default_factory=list)
    tensors: list[GTensor] = field(default_factory=list)
    data: bytes = b""
    alignment: int = 32
    n_tensors: int | None = None
    n_kv: int | None = None


def _gval(vtype: int, v: Any) -> bytes:
    if vtype in _G_SCALAR:
        code = _G_SCALAR[vtype]
        try:
            return struct.pack("<" + code, v)
        except struct.error:
            return struct.pack("<Q", 0)[:struct.calcsize(code)]
    if vtype == STRING:
        return v.pack() if isinstance(v, GStr) else GStr(str(v).encode()).pack()
    if vtype in _G_SCALAR and not isinstance(v, (int, float, bool)):
        return b"\0" * struct.calcsize(_G_SCALAR[vtype])
    if vtype == ARRAY:
        if not (isinstance(v, tuple) and len(v) == 4):  # a scalar relabelled as an array: its bytes follow
            return struct.pack("<I", 4) + struct.pack("<Q", 1) + _gval(4, v if isinstance(v, int) else 0)
        _, etype, count, items = v
        out = struct.pack("<I", etype & (2**32 - 1)) + struct.pack("<Q", (len(items) if count is None else count) & (2**64 - 1))
        return out + b"".join(_gval(etype, it) for it in items)
    return b""  # an unknown type: no payload


def gguf_serialise(s: GSpec) -> bytes:
    out = bytearray(b"GGUF")
    out += struct.pack("<I", s.version & (2**32 - 1))
    out += struct.pack("<Q", (len(s.tensors) if s.n_tensors is None else s.n_tensors) & (2**64 - 1))
    out += struct.pack("<Q", (len(s.kvs) if s.n_kv is None else s.n_kv) & (2**64 - 1))
    for kv in s.kvs:
        out += kv.key.pack() + struct.pack("<I", kv.vtype & (2**32 - 1)) + _gval(kv.vtype, kv.value)
    for t in s.tensors:
        out += t.name.pack()
        out += struct.pack("<I", (len(t.dims) if t.n_dims is None else t.n_dims) & (2**32 - 1))
        out += b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in t.dims)
        out += struct.pack("<I", t.type_id & (2**32 - 1)) + struct.pack("<Q", t.offset & (2**64 - 1))
    al = s.alignment if s.alignment > 0 and not s.alignment & (s.alignment - 1) and s.alignment < 1 << 16 else 32
    out += b"\0" * (-len(out) % al)
    return bytes(out) + s.data


def _kv_str(key: str, value: str) -> GKV:
    return GKV(GStr(key.encode()), STRING, GStr(value.encode()))


def gguf_seed(rng: random.Random) -> GSpec:
    """A valid GGUF: llama metadata, a 3-token vocab, F32/F16/BF16/quantised tensors."""
    import gguf

    s = GSpec()
    s.kvs = [_kv_str("general.architecture", "llama"), GKV(GStr(b"llama.block_count"), 4, 1),
             GKV(GStr(b"general.alignment"), 4, 32), _kv_str("tokenizer.ggml.model", "gpt2"),
             GKV(GStr(b"tokenizer.ggml.tokens"), ARRAY, ("array", STRING, None, [GStr(b"a"), GStr(b"b"), GStr(b"c")])),
             GKV(GStr(b"tokenizer.ggml.scores"), ARRAY, ("array", 6, None, [0.0, 1.0, 2.0])),
             GKV(GStr(b"general.file_type"), 4, 1)]
    Q = gguf.GGMLQuantizationType
    kinds = rng.sample([Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q6_K, Q.I8, Q.I32],
                       rng.randint(2, 4))
    data = bytearray()
    for i, qt in enumerate(kinds):
        block, tsize = gguf.GGML_QUANT_SIZES[qt]
        cols = max(block, 32) if block > 1 else rng.choice((1, 4, 32))
        rows = rng.randint(1, 3)
        if qt in (Q.F32, Q.F16, Q.BF16, Q.I8, Q.I32):
            arr = (np.random.default_rng(rng.getrandbits(32)).standard_normal((rows, cols)) * 3)
            np_dt = {Q.F32: np.float32, Q.F16: np.float16, Q.I8: np.int8, Q.I32: np.int32, Q.BF16: np.float32}[qt]
            raw = arr.astype(np_dt).tobytes()
            if qt == Q.BF16:
                raw = (np.frombuffer(raw, dtype=np.uint32) >> 16).astype(np.uint16).tobytes()
        else:
            arr = np.random.default_rng(rng.getrandbits(32)).standard_normal((rows, cols)).astype(np.float32)
            try:
                raw = gguf.quants.quantize(arr, qt).tobytes()
            except NotImplementedError:
                raw = bytes(rng.getrandbits(8) for _ in range(rows * cols // block * tsize))
        data += b"\0" * (-len(data) % 32)
        s.tensors.append(GTensor(GStr(f"blk.0.t{i}.weight".encode()), [cols, rows], int(qt), len(data)))
        data += raw
    s.data = bytes(data)
    return s


def gguf_mutate(rng: random.Random, seed: GSpec) -> bytes:
    s = copy.deepcopy(seed)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(17)
        kv = rng.choice(s.kvs) if s.kvs else None
        t = rng.choice(s.tensors) if s.tensors else None
        if op == 0:
            s.version = rng.choice([0, 1, 2, 3, 4, 2**32 - 1])
        elif op == 1:  # counts
            if rng.random() < 0.5:
                s.n_tensors = _interesting(rng, len(s.tensors))
            else:
                s.n_kv = _interesting(rng, len(s.kvs))
        elif op == 2 and kv:  # string lengths that lie
            target = kv.key if rng.random() < 0.5 or not isinstance(kv.value, GStr) else kv.value
            target.length = _interesting(rng, len(target.text))
        elif op == 3 and kv:  # value type
            kv.vtype = rng.choice([*range(0, 14), 255, 2**32 - 1])
        elif op == 4 and kv and kv.vtype == ARRAY:  # array element type / count / nesting
            _, et, cnt, items = kv.value
            r = rng.random()
            if r < 0.4:
                kv.value = ("array", et, _interesting(rng, len(items)), items)
            elif r < 0.7:
                kv.value = ("array", rng.choice([*range(0, 14), 2**32 - 1]), cnt, items)
            else:
                inner = ("array", et, None, items)
                for _ in range(rng.randint(1, 6)):
                    inner = ("array", ARRAY, None, [inner])
                kv.value = inner
        elif op == 5:  # well-known keys with the wrong type or value
            key = rng.choice(["general.alignment", "general.architecture", "general.file_type",
                              "tokenizer.ggml.tokens", "slmctl.provenance", "llama.block_count",
                              "llama.embedding_length", "tokenizer.ggml.bos_token_id"])
            val = rng.choice([(4, rng.choice([0, 1, 3, 7, 64, 2**31, 2**32 - 1])), (STRING, GStr(b"x")),
                              (STRING, GStr(rng.choice([b"[]", b"1", b'{"inputs": 3}', b'{"inputs": [7]}',
                                                        b'{"versions": 1}', b"[" * 3000]))),
                              (6, 1.5), (7, True), (11, -1), (ARRAY, ("array", 4, None, [1, 2])),
                              (ARRAY, ("array", STRING, None, [])), (ARRAY, ("array", 6, None, [1.0]))])
            s.kvs = [k for k in s.kvs if k.key.text != key.encode()]
            s.kvs.append(GKV(GStr(key.encode()), *val))
            if key == "general.alignment" and val[0] == 4:
                s.alignment = val[1]
        elif op == 6 and t:  # dims count
            t.n_dims = rng.choice([0, 1, 3, 4, 5, 2**32 - 1])
        elif op == 7 and t:  # a dimension
            t.dims[rng.randrange(len(t.dims))] = rng.choice([_interesting(rng), 0, 1, 3, 31, 33, 2**40, 2**40 + 1])
        elif op == 8 and t:  # extra dimensions
            t.dims = t.dims + [rng.choice([0, 1, 2, 2**20])] * rng.randint(1, 4)
        elif op == 9 and t:  # tensor type
            t.type_id = rng.choice([*range(0, 42), 2**31, 2**32 - 1])
        elif op == 10 and t:  # offset
            t.offset = rng.choice([_interesting(rng, len(s.data)), t.offset + 1, t.offset + 32, 0, len(s.data),
                                   len(s.data) - 32, 2**64 - 32])
        elif op == 11 and t:  # duplicate tensor / names
            if rng.random() < 0.5:
                s.tensors.append(copy.deepcopy(t))
            else:
                t.name = GStr(rng.choice([b"", b"\xff\xfe", b"a" * 5000, b"token_embd.weight", b"\0"]))
        elif op == 12:  # data truncated / extended
            s.data = s.data[:rng.randrange(len(s.data) + 1)] if rng.random() < 0.7 else s.data + b"\0" * 4096
        elif op == 13 and kv:  # drop or duplicate a kv
            if rng.random() < 0.5:
                s.kvs.remove(kv)
            else:
                s.kvs.append(copy.deepcopy(kv))
        elif op == 14:  # many kvs / many tensors within the byte budget
            if rng.random() < 0.5:
                s.kvs += [GKV(GStr(f"k{i}".encode()), 0, 1) for i in range(rng.choice((10, 1000)))]
            else:
                s.tensors += [GTensor(GStr(f"z{i}".encode()), [0], 0, 0) for i in range(rng.choice((10, 500)))]
        elif op == 15 and kv:  # big arrays of scalars
            kv.vtype = ARRAY
            kv.value = ("array", rng.choice([0, 4, 10, 12]), None, [1] * rng.choice((0, 1, 1000, 10000)))
        elif op == 16:  # alignment mismatch between header and layout
            s.alignment = rng.choice([1, 8, 64, 4096])
    out = gguf_serialise(s)
    if rng.random() < 0.25:
        out = _flip_bytes(rng, out)
    return _byte_tail(rng, out)


# --------------------------------------------------------------------------- ONNX
def onnx_seed(rng: random.Random, folder: Path) -> Any:
    """A valid tiny ONNX model with raw, typed and external initializers (weights.bin in ``folder``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    a = np.random.default_rng(rng.getrandbits(32)).standard_normal((4, 4)).astype(np.float32)
    ext = np.random.default_rng(rng.getrandbits(32)).standard_normal((4, 4)).astype(np.float32)
    w = numpy_helper.from_array(a, "w")
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    h = numpy_helper.from_array(np.arange(8, dtype=np.float16).reshape(2, 4), "h")
    i64 = helper.make_tensor("i", TensorProto.INT64, [3], [1, -2, 3])
    e = onnx.TensorProto(name="e", data_type=TensorProto.FLOAT, dims=[4, 4], data_location=TensorProto.EXTERNAL)
    pad = bytes(rng.randint(0, 16))
    (folder / "weights.bin").write_bytes(pad + ext.tobytes())
    for k, v in (("location", "weights.bin"), ("offset", str(len(pad))), ("length", str(ext.nbytes))):
        e.external_data.add(key=k, value=v)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("MatMul", ["m", "e"], ["n"]),
             helper.make_node("Add", ["n", "b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], [w, b, h, i64, e])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="source", value="fuzz")
    return model


def onnx_mutate(rng: random.Random, seed: Any, folder: Path) -> bytes:
    """Mutate a copy of ``seed`` (files it points at go in ``folder``); return the serialised model."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(seed)
    inits = list(m.graph.initializer)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(12)
        t = rng.choice(m.graph.initializer) if len(m.graph.initializer) else None
        if op == 0 and t is not None:  # data type
            t.data_type = rng.choice([*range(0, 26), 99, 2**31 - 1, -1]) if rng.random() < 0.9 else 0
        elif op == 1 and t is not None:  # dims
            if len(t.dims):
                t.dims[rng.randrange(len(t.dims))] = rng.choice([-1, 0, 2**31, 2**40, 2**62, -(2**63), 3, 5])
            else:
                t.dims.append(rng.choice([-1, 2**40]))
        elif op == 2 and t is not None:  # rank
            t.dims.extend([rng.choice([0, 1, 2, 2**20])] * rng.randint(1, 40))
        elif op == 3 and t is not None:  # raw data length
            if t.raw_data:
                t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data))] if rng.random() < 0.6 else t.raw_data + b"\0" * rng.randint(1, 9)
            else:
                t.raw_data = bytes(rng.randint(0, 70))
        elif op == 4:  # external data location
            e = next((x for x in m.graph.initializer if x.name == "e"), None)
            if e is None:
                continue
            loc = rng.choice(["../../etc/passwd", "../outside.bin", "/etc/passwd", "sub/../../x.bin", "link.bin",
                              "dirlink/w.bin", "", ".", "missing.bin", "weights.bin\x00x", "a" * 5000, "sub",
                              "./weights.bin", "sub/../weights.bin"])
            if loc == "link.bin" and not (folder / "link.bin").is_symlink():
                (folder / "link.bin").symlink_to(folder.parent / "outside.bin")
            elif loc == "dirlink/w.bin" and not (folder / "dirlink").is_symlink():
                (folder / "dirlink").symlink_to(folder.parent)
            elif loc == "sub":
                (folder / "sub").mkdir(exist_ok=True)
            for kv in e.external_data:
                if kv.key == "location":
                    kv.value = loc
        elif op == 5:  # external offset / length
            e = next((x for x in m.graph.initializer if x.name == "e"), None)
            if e is None:
                continue
            key = rng.choice(["offset", "length"])
            val = rng.choice(["-1", "x", "", str(2**63), str(2**64), "1e3", "0", "65", "63", "4096", " 1", "0x10"])
            for kv in e.external_data:
                if kv.key == key:
                    kv.value = val
            if rng.random() < 0.3:
                e.external_data.add(key=rng.choice(["checksum", "location", "basepath"]), value="../../x")
        elif op == 6 and t is not None:  # flip to external with no entries / to default with none
            t.data_location = rng.choice([0, 1])
        elif op == 7 and t is not None:  # typed fields inconsistent with dims
            del t.float_data[:]
            t.int64_data.extend([rng.randint(-5, 5) for _ in range(rng.randint(0, 9))])
        elif op == 8:  # drop / duplicate initializer
            if inits and rng.random() < 0.5:
                m.graph.initializer.append(copy.deepcopy(rng.choice(inits)))
            elif len(m.graph.initializer):
                del m.graph.initializer[rng.randrange(len(m.graph.initializer))]
        elif op == 9:  # a constant node with external data (a tensor outside the initializer list)
            from onnx import TensorProto, helper

            ct = onnx.TensorProto(name="c", data_type=TensorProto.FLOAT, dims=[2], data_location=TensorProto.EXTERNAL)
            ct.external_data.add(key="location", value=rng.choice(["../../etc/passwd", "/etc/hostname", "weights.bin"]))
            m.graph.node.append(helper.make_node("Constant", [], ["cst"], value=ct))
        elif op == 10:
            m.metadata_props.add(key=rng.choice(["slmctl.provenance", "x"]),
                                 value=rng.choice(["[]", "{", '{"inputs": 5}', "x" * 1000]))
        elif op == 11:  # weights file itself mutated
            wb = folder / "weights.bin"
            if wb.exists() and not wb.is_symlink():
                wb.write_bytes(wb.read_bytes()[:rng.randrange(65)])
    out = m.SerializeToString()
    if rng.random() < 0.3:
        out = _flip_bytes(rng, out)
    return _byte_tail(rng, out)


# --------------------------------------------------------------------------- the oracle
class Crash(Exception):
    """The input did not end in a SlmctlError or a correct result."""


def _bytes_of(t) -> bytes:
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _cli(*args: str) -> tuple[int, str, str]:
    from slmctl.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _debug_traceback(args: tuple[str, ...]) -> str:
    """Rerun a CLI call that hit an internal error with SLMCTL_DEBUG=1 to get its traceback."""
    import os

    os.environ["SLMCTL_DEBUG"] = "1"
    try:
        _cli(*args)
    except BaseException:  # noqa: BLE001
        return traceback.format_exc()[-1500:]
    finally:
        del os.environ["SLMCTL_DEBUG"]
    return ""


def _expect_clean_cli(code: int, out: str, err: str, what: str, args: tuple[str, ...] = ()) -> bool:
    """True when the run succeeded; False when it failed cleanly; Crash otherwise."""
    if "internal error" in err or "Traceback" in err or "out of memory" in err:
        raise Crash(f"{what}: {err.strip()[:500]}\n{_debug_traceback(args) if args else ''}")
    if code == 0:
        return True
    if code != 1 or not err.startswith("error: ") or out:
        raise Crash(f"{what}: exit {code}, stdout {out[:100]!r}, stderr {err[:300]!r}")
    return False


def check(path: Path, workdir: Path, *, cli: bool = True, export: bool = True, human: bool = True) -> str:
    """Run one input through slmctl. Returns 'rejected' or 'accepted'; raises Crash otherwise.

    An accepted input always has every tensor loaded and checked against its header; with ``export``
    it also goes through `slmctl inspect --json`, `slmctl export --format safetensors` and a read-back
    (and, with ``human``, the human-readable `inspect`). ``cli`` says whether a rejected input is also
    run through `slmctl inspect`, to check the message and exit code.
    """
    import torch

    from slmctl.errors import SlmctlError
    from slmctl.io.artifact import open_artifact

    try:
        art = open_artifact(path)
    except SlmctlError as exc:
        if not exc.message:
            raise Crash("SlmctlError with an empty message") from None
        if cli:  # the CLI must say the same thing, cleanly
            args = ("inspect", str(path))
            code, out, err = _cli(*args)
            if _expect_clean_cli(code, out, err, "inspect of a rejected input", args):
                raise Crash("open_artifact refused the input but `slmctl inspect` accepted it")
        return "rejected"
    except Crash:
        raise
    except BaseException as exc:  # noqa: BLE001 - that is the point
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise Crash(f"open_artifact: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}") from None

    # accepted: every tensor must load as announced (or refuse with a SlmctlError)
    loaded: dict[str, bytes] = {}
    for name, lt in art.tensors.items():
        try:
            t = lt.load()
        except SlmctlError:
            continue
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise Crash(f"load {name!r}: {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}") from None
        if not isinstance(t, torch.Tensor):
            raise Crash(f"load {name!r} returned {type(t).__name__}, not a tensor")
        if tuple(t.shape) != tuple(lt.shape):
            raise Crash(f"load {name!r}: shape {tuple(t.shape)} but the header said {lt.shape}")
        loaded[name] = _bytes_of(t)
    if not export:
        return "accepted"
    args = ("inspect", str(path), "--json")
    code, out, err = _cli(*args)
    if _expect_clean_cli(code, out, err, "inspect --json", args):
        try:
            info = json.loads(out)
        except ValueError:
            raise Crash(f"inspect --json printed no JSON: {out[:200]!r}") from None
        if info.get("tensors") != len(art.tensors):
            raise Crash(f"inspect says {info.get('tensors')} tensors, the reader {len(art.tensors)}")
    if export and human:
        args = ("inspect", str(path))
        code, out, err = _cli(*args)
        _expect_clean_cli(code, out, err, "inspect", args)
    if export:
        dest = workdir / "out.safetensors"
        for p in workdir.glob("out.safetensors*"):
            p.unlink()
        for p in workdir.glob(".out.safetensors*"):
            p.unlink()
        args = ("export", str(path), "--format", "safetensors", "-o", str(dest))
        code, out, err = _cli(*args)
        if _expect_clean_cli(code, out, err, "export --format safetensors", args):
            if out.strip() != str(dest):
                raise Crash(f"export printed {out!r}, not the output path")
            from slmctl.io.safetensors import open_file

            try:
                back, _ = open_file(dest)
            except SlmctlError as exc:
                raise Crash(f"export wrote a file slmctl cannot read back: {exc.message}") from None
            if set(back) != set(loaded) and set(back) != set(art.tensors):
                raise Crash(f"export wrote tensors {sorted(back)[:5]}, expected {sorted(art.tensors)[:5]}")
            for name, blob in loaded.items():
                if name in back and _bytes_of(back[name].load()) != blob:
                    raise Crash(f"export changed the bytes of tensor {name!r}")
        elif dest.exists():
            raise Crash("a failed export left its output behind")
        if [p for p in workdir.iterdir() if ".slmctl-tmp-" in p.name]:
            raise Crash("export left temporary files behind")
    return "accepted"


# --------------------------------------------------------------------------- one input per call
class Fuzzer:
    """Makes inputs for one format from a seeded RNG, writes them into ``workdir``."""

    def __init__(self, fmt: str, workdir: Path, seed: int):
        self.fmt, self.workdir, self.seed = fmt, Path(workdir), seed
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._seeds: list[Any] = []

    N_SEEDS = 8

    def _seed_for(self, rng: random.Random):
        if not self._seeds:  # the same valid seeds for every (seed, format), so input i is reproducible
            for k in range(self.N_SEEDS):
                srng = random.Random(f"{self.seed}:{self.fmt}:seed{k}")
                folder = self.workdir / "seeds" / str(k)
                folder.mkdir(parents=True, exist_ok=True)
                if self.fmt == "safetensors":
                    self._seeds.append(st_seed(srng))
                elif self.fmt == "gguf":
                    self._seeds.append(gguf_seed(srng))
                else:
                    self._seeds.append((onnx_seed(srng, folder), folder))
        return rng.choice(self._seeds)

    def make(self, i: int) -> Path:
        """The i-th input of this run (deterministic in (seed, i)); returns its path."""
        for attempt in range(5):  # a mutation that does not apply to this seed is drawn again
            try:
                return self._make(i, random.Random(f"{self.seed}:{self.fmt}:{i}:{attempt}"))
            except (KeyError, TypeError, IndexError, AttributeError, ValueError):
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _make(self, i: int, rng: random.Random) -> Path:
        case = self.workdir / "case"
        if case.exists() or case.is_symlink():
            shutil.rmtree(case, ignore_errors=True)
        for stray in ("outside.bin",):
            (self.workdir / stray).write_bytes(b"SECRET" * 20)
        case.mkdir()
        s = self._seed_for(rng)
        if self.fmt == "safetensors":
            p = case / "m.safetensors"
            p.write_bytes(st_mutate(rng, *s) if i % 50 else st_serialise(*s))
        elif self.fmt == "gguf":
            p = case / "m.gguf"
            p.write_bytes(gguf_mutate(rng, s) if i % 50 else gguf_serialise(s))
        else:
            model, folder = s
            shutil.copyfile(folder / "weights.bin", case / "weights.bin")
            p = case / "model.onnx"
            p.write_bytes(onnx_mutate(rng, model, case) if i % 50 else model.SerializeToString())
        return p


def minimise(data: bytes, still_crashes: Callable[[bytes], bool], budget: int = 300) -> bytes:
    """Shrink a crashing input by cutting chunks while it still crashes (a small ddmin)."""
    best = data
    chunk = max(1, len(best) // 2)
    tries = 0
    while chunk >= 1 and tries < budget:
        i = 0
        shrunk = False
        while i < len(best) and tries < budget:
            cand = best[:i] + best[i + chunk:]
            tries += 1
            if cand and still_crashes(cand):
                best = cand
                shrunk = True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return best
