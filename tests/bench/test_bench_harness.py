"""The bench harness itself (bench/timing.py, bench/launch.py, bench/run.py): what `make bench` relies on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run
    import timing

    return timing, run


def test_peak_rss_is_the_childs_own(bench):
    timing, _ = bench
    hog = bytearray(400 * 2 ** 20)  # the parent's peak must not leak into the child's figure
    hog[::4096] = b"x" * len(hog[::4096])
    small = timing.measure([sys.executable, "-c", "pass"])
    big = timing.measure([sys.executable, "-c", "b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096])"])
    del hog
    assert small["rc"] == 0 and big["rc"] == 0
    assert small["peak_rss_mib"] < 100, small
    assert 150 < big["peak_rss_mib"] < 300, big
    assert big["wall_s"] > 0 and len(big["load_before"]) == 3 and "other_cores" in big


def test_alternate_rotates_and_reports_medians(bench, tmp_path):
    timing, _ = bench
    log = tmp_path / "order"
    cmds = {n: [sys.executable, "-c", f"open({str(log)!r}, 'a').write('{n}')"] for n in ("a", "b")}
    runs = timing.alternate(cmds, rounds=3, retries=0)
    assert log.read_text() == "abbaab"  # the first tool rotates each round
    assert [r["round"] for r in runs["a"]] == [0, 1, 2]
    s = timing.stats(runs["a"])
    assert s["min"] <= s["median"] <= s["max"] and s["n"] >= 1
    with pytest.raises(RuntimeError, match="exit 3"):
        timing.alternate({"bad": [sys.executable, "-c", "raise SystemExit(3)"]}, rounds=1)


def test_hot_path_names_where_the_time_goes(bench, tmp_path):
    timing, _ = bench
    mod = tmp_path / "slowmod.py"
    mod.write_text("def burn():\n    return sum(i * i for i in range(3_000_000))\n\nburn()\n")
    h = timing.hot_path([sys.executable, "-m", "slowmod"], cwd=tmp_path,
                        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert "error" not in h, h
    assert 0 < sum(f["share"] for f in h["functions"]) <= 1.001 and h["total_s"] > 0
    assert any("genexpr" in f["function"] or "burn" in f["function"] for f in h["functions"][:2]), h
    assert "by package" in timing.hot_path_note(h)
    assert "error" in timing.hot_path([sys.executable, "-m", "no_such_module_here"])
    with pytest.raises(ValueError):
        timing.hot_path(["slmctl", "export"])


def test_failed_section_keeps_previous_results(bench, tmp_path, monkeypatch):
    _, run = bench
    (tmp_path / "bench_ok.py").write_text(
        f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
        "import timing; timing.write_results('ok', {'ratio': 0.5}, markdown='## ok\\n\\nratio 0.5')\n")
    (tmp_path / "bench_bad.py").write_text("raise SystemExit(1)\n")
    results, doc = tmp_path / "results", tmp_path / "benchmarks.md"
    results.mkdir()
    (results / "bad.md").write_text("## bad\n\nthe previous figures\n")
    doc.write_text("previous doc\n")
    monkeypatch.setattr(run, "BENCH", tmp_path)
    monkeypatch.setattr(run, "RESULTS", results)
    monkeypatch.setattr(run, "DOC", doc)
    monkeypatch.setenv("SLMCTL_BENCH_RUN_ID", "test-run-1")
    monkeypatch.delenv("ONLY", raising=False)
    assert run.main([]) == 1
    assert doc.read_text() == "previous doc\n"  # a failed run does not rewrite the page
    assert (results / "bad.md").read_text() == "## bad\n\nthe previous figures\n"
    assert json.loads((results / "ok.json").read_text())["run_id"] == "test-run-1"
    last = json.loads((results / "run.json").read_text())  # the run's record says what failed and how long each took
    assert last["run_id"] == "test-run-1" and last["failed"] == ["bad"] and set(last["minutes"]) == {"ok", "bad"}
    assert json.loads((results / "ok.json").read_text())["section_seconds"] >= 0
    assert run.main(["nosuch"]) == 2
    monkeypatch.setenv("SLMCTL_BENCH_RUN_ID", "test-run-2")
    assert run.main(["ok"]) == 0
    text = doc.read_text()
    assert "## ok" in text and "test-run-2" in text and "the previous figures" in text
    meta = json.loads((results / "ok.json").read_text())
    assert meta["run_id"] == "test-run-2" and meta["ratio"] == 0.5 and meta["machine"]["cores"] >= 1


def test_results_carry_no_path_of_this_machine(bench, tmp_path, monkeypatch):
    timing, _ = bench
    monkeypatch.setenv("SLMCTL_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setenv("SLMCTL_BENCH_RUN_ID", "test-run-3")
    here = str(timing.ROOT / "bench" / "out" / "x")
    timing.write_results("p", {"cmd": f"{sys.executable} -m slmctl export {here}"}, markdown=f"`{here}`")
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["cmd"] == "python -m slmctl export bench/out/x", doc["cmd"]
    assert (tmp_path / "p.md").read_text() == "`bench/out/x`\n"
    runs = {"a": [{"wall_s": 2.0, "peak_rss_mib": 10.0, "contended": False, "stdout": "x", "load_before": [0.1] * 3,
                   "load_after": [0.2] * 3, "other_cores": 0.0}],
            "b": [{"wall_s": 4.0, "peak_rss_mib": 40.0, "contended": True, "stdout": "y", "load_before": [3.0] * 3,
                   "load_after": [3.0] * 3, "other_cores": 1.5}]}
    c = timing.compare(runs, "a", "b")
    assert "stdout" not in c["runs"]["a"][0] and c["wall"]["a"]["median"] == 2.0
    assert c["time_ratio"] is None and c["rss_ratio"] is None  # a contended side gives no ratio
    assert "(contended)" in timing.fmt(c["wall"]["b"]) and timing.fmt_ratio(None).startswith("not reported")


def test_imatrix_section_agreement_and_verdict(bench):
    """bench_imatrix's tensor-by-tensor agreement (Pearson per tensor over the names both hold) and its verdict."""
    import numpy as np

    import bench_imatrix as bi

    rng = np.random.default_rng(0)
    a = {f"blk.{i}.ffn_up.weight": rng.random(64).astype(np.float32) + 0.1 for i in range(3)}
    b = {n: v * 3.0 for n, v in a.items()}  # a scale does not change the correlation
    b["blk.0.ffn_up.weight"] = b["blk.0.ffn_up.weight"][::-1].copy()  # a reversed channel order does
    b["output.weight"] = rng.random(8).astype(np.float32)  # only in one matrix: counted, not compared
    got = bi.agreement(a, b)
    assert got["tensors"] == [3, 3, 4]
    assert got["pearson_median"] == pytest.approx(1.0) and got["pearson_min"] < 0.9
    run = {"wall_s": 10.0, "peak_rss_mib": 100.0, "contended": False, "load_before": [0.1] * 3,
           "load_after": [0.1] * 3, "other_cores": 0.0}
    entries = {}
    for peer, secs in (("llama-imatrix f16", 20.0), ("llama-imatrix f32", 8.0)):
        c = bench[0].compare({"slmctl": [run], peer: [{**run, "wall_s": secs}]}, "slmctl", peer)
        entries[peer] = {**c, "agreement": got}
    md = bi.render(entries, Path("llama-imatrix"), 32808)
    assert "| llama-imatrix f16 | 10.0 [10.0-10.0] | 20.0 [20.0-20.0] | 0.50x |" in md
    assert "slmctl vs llama-imatrix f16: 0.50x: met" in md and "1.25x" in md
