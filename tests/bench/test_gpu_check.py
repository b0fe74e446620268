"""bench/gpu_check.sh's CPU half on the real sample (slow): every step runs with --device cpu, writes its
output and a JSON report that reads back, and the summary has no failure. The CUDA half (the comparisons)
runs only where torch sees a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = ("wanda", "gptq", "awq", "imatrix", "eval", "distill")


@pytest.mark.slow
def test_gpu_check_cpu_half(tmp_path):
    exe = Path(sys.executable)
    env = dict(os.environ, GPU_CHECK_CPU_ONLY="1", WORK=str(tmp_path), PY=str(exe), SLMCTL=str(exe.parent / "slmctl"),
               SAMPLES="4", SEQ="128", WIN="4", CTX="128", STEPS="2")
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert json.loads(r.stdout) == summary
    assert summary["devices"] == ["cpu"] and summary["failed"] == [] and summary["checks"] == []
    assert set(summary["steps"]) == {f"cpu/{s}" for s in STEPS}
    assert all(row["seconds"] > 0 for row in summary["steps"].values())
    # the layer engine's report: the device it ran on, and no spill at these sizes
    assert summary["steps"]["cpu/wanda"]["device"]["device"] == "cpu"
    assert summary["steps"]["cpu/wanda"]["device"]["spill"]["spilled"] is False
    for out in ("wanda/model.safetensors", "gptq/model.safetensors", "awq/model.safetensors", "imatrix.gguf",
                "distill/model.safetensors"):
        assert (tmp_path / "cpu" / out).is_file(), out
    for m in ("gptq", "awq"):
        assert json.loads((tmp_path / "cpu" / f"{m}-eval.json").read_text())["ppl"] > 1
