"""Property-based checks (hypothesis) of the readers' validation: whatever the header says, a file is
either refused with a SlmctlError or every tensor it announces lies inside the file, with exactly
the bytes its dtype and shape need, and no two tensors share bytes."""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slmctl.errors import SlmctlError


from fuzz.harness import GKV, STRING, GSpec, GStr, GTensor, gguf_serialise  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X9", "", "f32"]
ints = st.one_of(st.integers(0, 64), st.sampled_from([-1, 2**31, 2**32, 2**53, 2**63, 2**64 + 1, -(2**63)]))

entry = st.fixed_dictionaries({
    "dtype": st.sampled_from(DTYPES),
    "shape": st.lists(ints, max_size=4),
    "data_offsets": st.lists(ints, min_size=0, max_size=3),
})
header = st.dictionaries(st.text(min_size=0, max_size=8), entry, max_size=5)


@SETTINGS
@given(h=header, data_len=st.integers(0, 256), length_delta=st.sampled_from([0, 0, 0, -1, 1, 2**40]))
def test_safetensors_header_validation(tmp_path_factory, h, data_len, length_delta):
    from slmctl.io.safetensors import DTYPES as ST, read_header

    p = tmp_path_factory.mktemp("st") / "m.safetensors"
    raw = json.dumps(h).encode()
    p.write_bytes(struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + b"\0" * data_len)
    try:
        entries, meta, start = read_header(p)
    except SlmctlError as exc:
        assert exc.message
        return
    size = p.stat().st_size
    spans = []
    for name, e in entries.items():
        assert 0 <= e.begin <= e.end <= size - start
        assert e.end - e.begin == math.prod(e.shape) * ST[e.dtype][0]
        if e.end > e.begin:
            spans.append((e.begin, e.end))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


g_tensor = st.builds(lambda dims, tid, off, nd: GTensor(GStr(b"w"), dims, tid, off, nd),
                     st.lists(st.sampled_from([0, 1, 4, 32, 33, 256, 2**32, 2**40, 2**63]), min_size=1, max_size=4),
                     st.sampled_from([0, 1, 2, 3, 8, 12, 14, 24, 30, 39, 99]),
                     st.sampled_from([0, 32, 64, 7, 4096, 2**63, 2**64 - 32]),
                     st.sampled_from([None, None, 0, 5]))


@SETTINGS
@given(tensors=st.lists(g_tensor, max_size=3), n_t=st.sampled_from([None, None, 2**40, 2**64 - 1]),
       n_kv=st.sampled_from([None, None, 7, 2**63]), slen=st.sampled_from([None, None, 0, 2**63 - 1, 2**64 - 1]),
       data_len=st.sampled_from([0, 64, 512]))
def test_gguf_header_validation(tmp_path_factory, tensors, n_t, n_kv, slen, data_len):
    from slmctl.io import gguf as gguf_io

    for i, t in enumerate(tensors):
        t.name = GStr(f"t{i}".encode())
    spec = GSpec(kvs=[GKV(GStr(b"general.architecture"), STRING, GStr(b"llama", slen))], tensors=tensors,
                 data=b"\0" * data_len, n_tensors=n_t, n_kv=n_kv)
    p = tmp_path_factory.mktemp("gg") / "m.gguf"
    p.write_bytes(gguf_serialise(spec))
    try:
        g = gguf_io.read(p)
    except SlmctlError as exc:
        assert exc.message
        return
    size = p.stat().st_size
    for t in g.tensors.values():
        assert g.data_start <= t.offset and t.offset + t.nbytes <= size
        assert all(d >= 0 for d in t.shape)
