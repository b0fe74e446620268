"""A short run of the structure-aware fuzzer (fuzz/run.py): every format, every input ends well.

The long run (>= 10,000 inputs per format) is `make fuzz`; this one keeps `make test` under a minute.
It runs the real driver, so the per-input 10 s and 1 GiB (RLIMIT_AS) bounds are enforced here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PER_FORMAT = 15


def test_short_fuzz_run_every_input_ends_well(tmp_path):
    """One test (not three sharing a fixture), so pytest-xdist never runs the fuzzer twice."""
    r = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "--per-format", str(PER_FORMAT),
                        "--seed", "4242", "--cli-every", "4", "--export-every", "3", "--out", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    # no crash: every input was refused with a SlmctlError or read, inspected and exported correctly
    crashes = {f["format"]: f["distinct_crashes"] for f in doc["formats"] if f["crashes"]}
    assert doc["crashes"] == 0, crashes
    assert r.returncode == 0
    assert [f["format"] for f in doc["formats"]] == ["safetensors", "gguf", "onnx"]
    for f in doc["formats"]:
        assert f["inputs"] == PER_FORMAT and f["harness_errors"] == 0
        # the mutators must produce inputs slmctl refuses and inputs it accepts
        assert f["rejected"] > 0 and f["accepted"] > 0, f
        assert f["rejected"] + f["accepted"] == f["inputs"]
        assert f["max_secs"] < doc["timeout_s"] == 10
    assert doc["memory_limit_bytes"] == 1 << 30
