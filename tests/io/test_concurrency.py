"""Two runs write the same output at once: one wins, the other fails cleanly, the result is whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from fuzz import kill  # noqa: E402


def _race(args: list[str], env: dict) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "slmctl", *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    return out


@pytest.mark.parametrize("fmt,name", [("hf", "out"), ("safetensors", "out.safetensors")])
def test_two_writers_one_wins(tiny_llama, tmp_path, fmt, name):
    env = dict(os.environ, SLMCTL_CACHE=str(tmp_path / "cache"))
    ref = tmp_path / "ref" / name
    ref.parent.mkdir()
    assert kill.slmctl("export", str(tiny_llama), "--format", fmt, "-o", str(ref), env=env, timeout=600).returncode == 0
    out = tmp_path / "race" / name
    out.parent.mkdir()
    a, b = _race(["export", str(tiny_llama), "--format", fmt, "-o", str(out)], env)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 1], (a.stderr, b.stderr)
    loser = a if a.returncode == 1 else b
    assert loser.stderr.startswith("error: ") and "Traceback" not in loser.stderr
    assert "appeared while slmctl was writing it" in loser.stderr or "already exists" in loser.stderr
    assert loser.stdout == ""
    # the winner's output is whole: byte-identical to an uninterrupted run's
    assert kill.tree_digest(out, skip_sidecars=True) == kill.tree_digest(ref, skip_sidecars=True)
    assert kill.temps_beside(out) == []


def test_two_writers_with_force_leave_one_whole_output(tiny_llama, tmp_path):
    """With --force both may succeed (one after the other); the output is never a mix of the two."""
    env = dict(os.environ, SLMCTL_CACHE=str(tmp_path / "cache"))
    ref = tmp_path / "ref"
    assert kill.slmctl("export", str(tiny_llama), "-o", str(ref), env=env, timeout=600).returncode == 0
    out = tmp_path / "race" / "out"
    out.parent.mkdir()
    assert kill.slmctl("export", str(tiny_llama), "-o", str(out), env=env, timeout=600).returncode == 0
    runs = _race(["export", str(tiny_llama), "-o", str(out), "--force"], env)
    assert any(r.returncode == 0 for r in runs)
    for r in runs:
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr
        if r.returncode == 1:
            assert r.stderr.startswith("error: ")
    assert kill.tree_digest(out, skip_sidecars=True) == kill.tree_digest(ref, skip_sidecars=True)
    # the next run clears anything a loser left (its temporaries belong to dead processes now)
    assert kill.slmctl("export", str(tiny_llama), "-o", str(out), "--force", env=env, timeout=600).returncode == 0
    assert kill.temps_beside(out) == []
