"""slmctl's GGUF block maths is bit-identical to the gguf package's reference quantisers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from slmctl.io.gguf_types import block_bytes
from slmctl.methods.quantize.gguf_blocks import GGUF_BLOCK_TYPES, quantize_bf16

gguf = pytest.importorskip("gguf")
BLOCK_BYTES = {k: block_bytes(k) for k in GGUF_BLOCK_TYPES}  # gguf-py's sizes of the types slmctl packs
TYPES = sorted(BLOCK_BYTES)


def _ref(x: np.ndarray, kind: str) -> np.ndarray:
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType[kind.upper()])


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    cases = [
        rng.standard_normal((64, 256)).astype(np.float32),
        (rng.standard_normal((8, 96)) * 1e-3).astype(np.float32),
        rng.standard_t(2, size=(16, 128)).astype(np.float32) * 50,  # heavy tails
        np.zeros((3, 64), np.float32),  # all-zero blocks quantise to zeros
        np.tile(np.float32([-1, 1]), (4, 16)),  # absmax ties: the first one wins
        np.linspace(-4, 4, 32 * 5, dtype=np.float32).reshape(5, 32),  # exact halves after scaling
        np.full((2, 32), -7.25, np.float32),  # constant blocks (max == min)
        rng.integers(-127, 128, size=(6, 64)).astype(np.float32),  # q8_0 exactly representable
        rng.standard_normal((2, 3, 64)).astype(np.float32),  # 3-D
    ]
    return cases


@pytest.mark.parametrize("kind", TYPES)
def test_block_types_bit_identical(kind):
    fn = GGUF_BLOCK_TYPES.get(kind)
    for x in _cases():
        got, ref = fn(x), _ref(x, kind)
        assert got.dtype == np.uint8 and got.shape == ref.shape
        assert np.array_equal(got, ref), f"{kind} differs on a {x.shape} case"
        assert got.shape[-1] == x.shape[-1] // 32 * BLOCK_BYTES[kind]


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.sampled_from([32, 64])),
              elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=False)), st.sampled_from(TYPES))
def test_block_types_bit_identical_property(x, kind):
    assert np.array_equal(GGUF_BLOCK_TYPES.get(kind)(x), _ref(x, kind))


def test_bf16_bit_identical_with_nan_and_ties():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4096).astype(np.float32)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.00390625, 1.01171875, 3e38], np.float32)
    x = np.concatenate([x, special])
    ref = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view(np.uint16)
    assert np.array_equal(quantize_bf16(x), ref)


def test_rows_that_do_not_fill_blocks_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        GGUF_BLOCK_TYPES.get("q8_0")(np.ones((2, 40), np.float32))


def test_unknown_block_type_lists_valid_ones():
    from slmctl.errors import UsageError

    with pytest.raises(UsageError) as e:
        GGUF_BLOCK_TYPES.get("q4_2")
    assert "q4_0" in e.value.hint


def test_round_half_away_matches_roundf_at_ties_and_neighbours():
    from slmctl.methods.quantize.gguf_blocks import _round_half_away

    halves = np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)
    x = np.concatenate([halves, np.nextafter(halves, np.float32(0)), np.nextafter(halves, np.float32(1e9)),
                        np.nextafter(halves, np.float32(-1e9)), np.float32([0.0, -0.0, 2 ** 23 - 0.5, 2 ** 24, 1e30]),
                        np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 100])
    # exact C roundf: the fraction x - trunc(x) is exact in float32
    whole = np.trunc(x)
    want = whole + np.where(np.abs(x - whole) >= 0.5, np.sign(x), 0).astype(np.float32)
    assert np.array_equal(_round_half_away(x), want)


def test_torch_f16_cast_equals_numpys():
    """The fast float32 -> float16 cast big exports use (torch's) gives numpy's bits: ties to even, subnormals,
    overflow to infinity, signed zeros, infinities and NaN."""
    from slmctl.pipelines.export.gguf_build import f16_caster

    cast = f16_caster(10 ** 12)
    assert cast is not None
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 65519.99, 1e-8, -6e-8, 5.96e-8,
                        2.98e-8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 6.1e-5, 1e30], dtype=np.float32)
    x = np.concatenate([special, rng.standard_normal(1 << 16).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 1 << 16),
                        rng.integers(0, 2 ** 32, 1 << 16, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x[~np.isnan(x) | (np.arange(len(x)) == 4)]  # one NaN (payloads may differ in their low bits)
    got = np.empty(len(x), dtype=np.float16)
    cast(got, x)
    np.testing.assert_array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))
