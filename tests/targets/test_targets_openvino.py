"""The OpenVINO plugin installed for real (pip, into a folder of its own), found through its entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "slmctl-openvino"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """pip-install plugins/slmctl-openvino (no deps, no network) into a site folder for this test only."""
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("ov")
    src = root / "src"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail(f"pip could not install the plugin:\n{r.stderr[-2000:]}")
    assert (site / "slmctl_openvino" / "__init__.py").is_file()
    return site


# in the default suite (about 15 s on 2 quiet cores: pip install, three CLI processes, one OpenVINO
# conversion), so CI checks the plugin really installs and profiles
def test_installed_plugin_is_listed_and_profiles(installed, tiny_llama):
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(installed), os.environ.get("PYTHONPATH", "")) if p),
           "SLMCTL_LOAD_PLUGINS": "openvino"}
    r = run_cli("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    plug = {p["name"]: p for p in doc["plugins"]}["openvino"]
    assert plug["source"] == "entry point" and plug["distribution"] == "slmctl-openvino"
    assert plug["version"] == "0.1.0" and plug["error"] is None and plug["targets"] == ["openvino"]
    t = {t["name"]: t for t in doc["targets"]}["openvino"]
    assert t["formats"] == ["hf", "onnx"] and t["exports"] == "openvino-ir"
    r = run_cli("profile", str(tiny_llama), "--target", "openvino", "--ctx", "8", "--batch", "1,2", "--repeats", "2",
                "--warmup", "1", "--decode-tokens", "2", "--no-bandwidth", "--json", env=env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["target"] == "openvino" and rep["kv_cache"] is False
    assert [d["batch"] for d in rep["decode"]] == [1, 2] and all(d["p50_ms"] > 0 for d in rep["decode"])
    # without the opt-in the plugin stays out, even though it is on the path
    r = run_cli("plugins", "--json", env={**env, "SLMCTL_LOAD_PLUGINS": ""})
    assert "openvino" not in [t["name"] for t in json.loads(r.stdout)["targets"]]
