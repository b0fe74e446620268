"""bench/bench_scale.py's arithmetic: the shape facts and memory bounds read from safetensors headers, the
growth exponent, and the verdicts its Markdown fragment gives (the timings themselves come from `make bench`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def scale(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_scale

    return bench_scale


def test_facts_and_bounds_from_the_headers(scale, tiny_llama):
    from safetensors.torch import load_file

    cfg = json.loads((Path(tiny_llama) / "config.json").read_text())
    tensors = {}
    for f in Path(tiny_llama).glob("*.safetensors"):
        tensors.update(load_file(f))
    facts = scale.safetensors_facts(Path(tiny_llama))
    assert facts["parameters"] == sum(t.numel() for t in tensors.values())
    assert facts["largest_tensor_bytes"] == max(t.numel() * t.element_size() for t in tensors.values())
    layer0 = sum(t.numel() for n, t in tensors.items() if ".layers.0." in n)
    assert facts["layer_parameters"] == layer0 > 0
    assert facts["hidden"] == cfg["hidden_size"] and facts["layers"] == cfg["num_hidden_layers"]
    b = scale.bounds(facts)
    assert b["streaming_mib"] == pytest.approx((2 * facts["largest_tensor_bytes"] + 300e6) / 2 ** 20)
    acts = scale.SAMPLES * scale.SEQLEN * cfg["hidden_size"] * 4 * 2
    assert b["gptq_mib"] == pytest.approx((16 * layer0 + acts) / 2 ** 20)


def test_exponent_is_the_log_log_slope(scale):
    assert scale.exponent(10.0, 40.0, 100, 400) == pytest.approx(1.0)
    assert scale.exponent(10.0, 80.0, 100, 400) == pytest.approx(1.5)
    assert scale.exponent(10.0, 10.0, 100, 400) == pytest.approx(0.0)


def _stat(v: float, contended: bool = False) -> dict:
    return {"median": v, "min": v, "max": v, "n": 1, "contended": contended}


def _result(scale, times: dict[str, list[float]], rss: list[float], llmc: list[float | None]) -> dict:
    """A result document as main() builds it: three sizes at 1x, 4x and 16x the parameters."""
    shapes = ["a", "b", "c"]
    res = {}
    for i, s in enumerate(shapes):
        facts = {"parameters": 100 * 4 ** i, "largest_tensor_bytes": 10 ** 6, "layer_parameters": 10 ** 6,
                 "hidden": 64, "layers": 2, "intermediate": 128}
        verbs = {}
        for verb, ts in times.items():
            wall = {"slmctl": _stat(ts[i])}
            mem = {"slmctl": _stat(rss[i])}
            if verb == "gptq" and llmc[i] is not None:
                wall["llmcompressor"], mem["llmcompressor"] = _stat(llmc[i]), _stat(2 * rss[i])
            verbs[verb] = {"wall": wall, "rss": mem, "runs": {k: [{"load_before": [1.0, 1.0, 1.0], "other_cores": 0.1}]
                                                              for k in wall}}
        res[s] = {"facts": facts, "bounds": scale.bounds(facts), "verbs": verbs}
    return {"shapes": shapes, "verbs": list(times), "rounds": 3, "big_rounds": 1, "minutes": 1.0, "results": res,
            "gguf_section": {}}


def test_verdicts_follow_the_targets(scale):
    # export grows linearly (exponent 1.0: met); eval grows as p^1.3 between b and c (MISSED);
    # GPTQ grows as p^1.4 (met <= 1.5) against llm-compressor's p^1.6 (no worse: met)
    result = _result(scale, {"export-f16": [1.0, 4.0, 16.0], "eval": [1.0, 4.0, 4.0 * 4 ** 1.3],
                             "gptq": [2.0, 2 * 4 ** 1.4, 2 * 16 ** 1.4]},
                     rss=[100.0, 200.0, 300.0], llmc=[None, 20.0, 20 * 4 ** 1.6])
    md = scale.render(result)
    lines = [ln for ln in md.splitlines() if ln.startswith("- ")]
    assert any(ln.startswith("- export-f16: growth exponent 1.00, 1.00") and ln.endswith(": met") for ln in lines), lines
    assert any(ln.startswith("- eval: growth exponent 1.00, 1.30") and ln.endswith("MISSED") for ln in lines), lines
    assert any(ln.startswith("- gptq: growth exponent 1.40, 1.40") and ln.endswith(": met") for ln in lines), lines
    assert "- GPTQ exponent no worse than llmcompressor's on the same sizes: met (1.40 vs 1.60)" in lines
    # the streaming bound at these facts is 2 MB + 300 MB, about 288 MiB: 300 MiB at the largest size misses it
    assert "- export-f16: peak RSS under its bound at every size: MISSED" in lines
    # GPTQ's bound: 16 MB of weights x 4 plus 8 x 256 x 64 x 8 bytes, about 17 MiB: missed at 100 MiB
    assert "- gptq: peak RSS under its bound at every size: MISSED" in lines
    assert any("GPTQ at b vs llmcompressor: time 0.70x, peak RSS 0.50x (target <= 1): met" in ln for ln in lines)
    # with a measured import floor GPTQ's RSS verdict also says whether the peak fits the bound plus the floor
    result["import_floor_mib"] = 250.0
    lines = scale.render(result).splitlines()
    assert "- export-f16: peak RSS under its bound at every size: MISSED" in lines  # its bound has an allowance
    assert "- gptq: peak RSS under its bound at every size: MISSED (under the bound plus the 250 MiB import floor: " \
           "MISSED)" in lines


def test_export_ratios_plain_and_fsynced(scale):
    """The converter comparison: each size's plain ratio judges the target; the fsynced converter's ratio is
    shown beside it and judged on its own line, for this section's sizes and the gguf section's rows."""
    result = _result(scale, {"export-f16": [1.0, 4.0, 10.0]}, rss=[100.0, 100.0, 100.0], llmc=[None] * 3)
    v = result["results"]["c"]["verbs"]["export-f16"]
    v["wall"]["converter"], v["wall"][scale.FSYNCED] = _stat(15.0), _stat(25.0)
    v["rss"]["converter"] = v["rss"][scale.FSYNCED] = _stat(800.0)
    result["gguf_section"] = {"run_id": "r1", "rows": [("sample", 135e6, "f16", 0.38, 0.30),
                                                       ("qwen2.5-0.5b", 402e6, "q8_0", 0.44)]}
    lines = scale.render(result).splitlines()
    assert "- c (this section) f16: 0.67x: MISSED (0.40x fsynced: met)" in lines, lines
    assert "- sample, 135M (gguf section, run `r1`) f16: 0.38x: met (0.30x fsynced: met)" in lines
    assert "- qwen2.5-0.5b, 402M (gguf section, run `r1`) q8_0: 0.44x: met" in lines
    assert "- GGUF export <= 0.5x the converter's time at every size measured: MISSED" in lines
    # one row has no fsynced comparison: that check cannot claim every size
    assert any(ln.startswith("- GGUF export <= 0.5x the converter's time with its output fsynced") and
               ln.endswith("MISSED") for ln in lines), lines
