"""Parity with the exporters slmctl is measured against, on the real sample: GGUF tensors byte for byte
against llama.cpp's convert_hf_to_gguf.py, and the ONNX graph's interface and logits against optimum-cli's.

Slow (`make test-peers`, `make test-slow`). The converter comes from the llama-cpp-python source package
(.peers/src, fetched by pip like bench/bench_gguf.py does); optimum-cli from its own venv (.peers/optimum,
built by `make peers`). Each test skips when its peer is missing. The helpers are the bench's own
(bench/bench_gguf.py, bench/bench_onnx.py), so the tests check what the bench reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import peer_bin

BENCH = Path(__file__).resolve().parents[2] / "bench"
OPTIMUM_CLI = peer_bin("optimum", "optimum-cli")

pytestmark = pytest.mark.slow


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.fixture(scope="module")
def sample() -> Path:
    from slmctl.io.resolve import resolve

    return Path(resolve("sample:smollm2-135m"))


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_gguf_tensors_are_the_converters_bytes(bench, sample, tmp_path, outtype):
    import bench_gguf

    try:
        src = bench_gguf.llama_cpp_src()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"llama.cpp's converter is not available: {exc}")
    ours, theirs = tmp_path / "slmctl.gguf", tmp_path / "convert.gguf"
    r = subprocess.run([sys.executable, "-m", "slmctl", "export", str(sample), "--format", "gguf", "--outtype",
                        outtype, "-o", str(ours), "--quiet"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(sample), "--outtype", outtype,
                        "--outfile", str(theirs)], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=str(src / "gguf-py")))
    assert r.returncode == 0, r.stderr[-3000:]
    same, total = bench_gguf.compare(ours, theirs)
    assert total > 0 and same == total, f"{total - same} of {total} tensors differ from the converter's"


@pytest.mark.skipif(not OPTIMUM_CLI.is_file(), reason=f"optimum-cli not installed at {OPTIMUM_CLI} (make peers)")
def test_onnx_graph_matches_optimums_export(bench, sample, tmp_path):
    import onnx

    import bench_onnx

    src = bench_onnx.optimum_source(sample, tmp_path / "optimum-src")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{OPTIMUM_CLI.parent}:{env.get('PATH', '')}")
    r = subprocess.run([str(OPTIMUM_CLI), "export", "onnx", "-m", str(src), "--task", "text-generation-with-past",
                        str(tmp_path / "optimum")], capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "slmctl", "export", str(sample), "--format", "onnx", "-o",
                        str(tmp_path / "slmctl"), "--quiet"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    files = {k: tmp_path / k / "model.onnx" for k in ("slmctl", "optimum")}

    def interface(f: Path) -> tuple[set, set]:
        g = onnx.load(str(f), load_external_data=False).graph
        return {i.name for i in g.input}, {o.name for o in g.output}

    ins, outs = interface(files["slmctl"])
    opt_ins, opt_outs = interface(files["optimum"])
    # the same KV-cache interface (past_key_values.N.key/value in, present.N.key/value out), so a runtime
    # written for optimum's layout runs slmctl's file; optimum may add inputs slmctl derives (none required)
    assert outs == opt_outs, (outs ^ opt_outs)
    assert ins <= opt_ins, ins - opt_ins
    checks = {k: bench_onnx.verify(sample, f) for k, f in files.items()}
    for k, c in checks.items():
        assert c["greedy_identical"] and c["top1_agreement_pct"] == 100.0, (k, c)
        assert c["max_abs_diff_prompt"] < 1e-3 and c["max_abs_diff_decode"] < 1e-3, (k, c)
