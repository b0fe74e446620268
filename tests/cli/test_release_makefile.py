"""The release Makefile's dependency graph: a second run does nothing, and touching the calibration
text redoes exactly the steps that read it and what is built from them (checked with make -n)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "examples" / "release"
# every file target, in an order where each comes after what it is built from
TARGETS = ["base/slmctl.json", "eval-base.json", "profile-base.json", "pruned/slmctl.json",
           "distilled/slmctl.json", "eval-distilled.json", "profile-distilled.json", "model-Q4_K_M.gguf",
           "eval-gguf.json", "profile-gguf.json", "onnx/model.onnx", "onnx-int4/model.onnx",
           "eval-onnx.json", "profile-onnx.json", "README.md", "summary.md"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def built(tmp_path):
    """A copy of the release folder whose outputs all exist with increasing timestamps."""
    rel = tmp_path / "release"
    shutil.copytree(RELEASE, rel, ignore=shutil.ignore_patterns("build"))
    t = 1_700_000_000
    for p in [rel / "Makefile", rel / "summary.py", *sorted((rel / "data").iterdir())]:
        os.utime(p, (t, t))
    for i, name in enumerate(TARGETS, 1):
        p = rel / "build" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        os.utime(p, (t + i, t + i))
    return rel


def dry_run(rel: Path) -> str:
    r = subprocess.run(["make", "-n", "-C", str(rel)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_second_run_does_nothing(built):
    out = dry_run(built)
    assert "slmctl" not in out


def test_touching_calibration_redoes_exactly_its_dependents(built):
    later = 1_800_000_000
    os.utime(built / "data" / "calib.txt", (later, later))
    out = dry_run(built)
    cmds = [line for line in out.splitlines() if line.startswith("slmctl")]
    verbs = [" ".join(c.split()[:2]) for c in cmds]
    # the base model and its own eval/profile do not read the calibration text
    assert not any("export sample:" in c for c in cmds)
    assert not any(c.startswith(("slmctl eval", "slmctl profile")) and ("eval-base.json" in c or "profile-base.json" in c)
                   for c in cmds)
    # prune reads it; everything built from the pruned model follows
    assert verbs[0] == "slmctl prune"
    for step in ("slmctl distill", "slmctl quantize", "slmctl eval", "slmctl profile"):
        assert step in verbs
    assert any("--format gguf" in c for c in cmds) and any("--format onnx" in c for c in cmds)


def test_touching_eval_text_redoes_only_the_evals(built):
    later = 1_800_000_000
    os.utime(built / "data" / "eval.txt", (later, later))
    cmds = [line for line in dry_run(built).splitlines() if line.startswith("slmctl")]
    evals = [c for c in cmds if c.startswith("slmctl eval")]
    assert len(evals) == 4
    # then the card is rewritten from the new reports and checked; nothing is rebuilt
    assert len(cmds) == 6 and cmds[4].startswith("slmctl card build/distilled")
    assert cmds[5].startswith("slmctl card --check build/README.md")
    assert not any(c.startswith("slmctl distill") or c.startswith("slmctl export") for c in cmds)


def test_card_names_every_artifact_and_report(built):
    os.utime(built / "build" / "eval-gguf.json", (1_800_000_000,) * 2)
    joined = dry_run(built).replace("\\\n", " ")  # make -n keeps a recipe's continuation lines
    write, check = [line for line in joined.splitlines() if line.startswith("slmctl card")]
    for name in ("distilled", "model-Q4_K_M.gguf", "onnx-int4"):
        assert f"/{name} " in write + " " and f"/{name}" in check
    for t in ("base", "distilled", "gguf", "onnx"):
        assert f"--eval build/eval-{t}.json" in write and f"--profile build/profile-{t}.json" in write
    assert "-o build/README.md" in write and check.startswith("slmctl card --check build/README.md")
