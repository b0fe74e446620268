"""A short run of the structure-aware fuzzer (fuzz/run.py): every format, every input ends well.

The long run (>= 10,000 inputs per format) is `make fuzz`; this one keeps `make test` under a minute.
It runs the real driver, so the per-input 10 s and 1 GiB (RLIMIT_AS) bounds are enforced here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PER_FORMAT = 20


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz")
    r = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "--per-format", str(PER_FORMAT),
                        "--seed", "4242", "--cli-every", "4", "--export-every", "3", "--out", str(out), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout, r.stderr[-2000:]
    return json.loads(r.stdout), r


def test_no_input_crashes(short_run):
    doc, r = short_run
    crashes = {f["format"]: f["distinct_crashes"] for f in doc["formats"] if f["crashes"]}
    assert doc["crashes"] == 0, crashes
    assert r.returncode == 0


def test_every_format_was_fuzzed_with_both_outcomes(short_run):
    doc, _ = short_run
    assert [f["format"] for f in doc["formats"]] == ["safetensors", "gguf", "onnx"]
    for f in doc["formats"]:
        assert f["inputs"] == PER_FORMAT
        assert f["harness_errors"] == 0
        # the mutators must produce inputs slmctl refuses and inputs it accepts (and exports)
        assert f["rejected"] > 0 and f["accepted"] > 0, f
        assert f["rejected"] + f["accepted"] == f["inputs"]


def test_bounds_held(short_run):
    doc, _ = short_run
    assert doc["timeout_s"] == 10 and doc["memory_limit_bytes"] == 1 << 30
    for f in doc["formats"]:
        assert f["max_secs"] < 10
