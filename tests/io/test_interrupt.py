"""SIGKILL at random moments (a few trials here; fuzz/kill.py runs >= 50 in `make fuzz`).

After each kill: the output is absent or complete and byte-identical to an uninterrupted run's,
the input is unchanged, and re-running succeeds and leaves no temporary file behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from fuzz import kill  # noqa: E402


def test_kill_trials_export(tiny_llama, tmp_path):
    doc = kill.run(2, seed=7, work=tmp_path, src=tiny_llama, log=lambda m: None,
                   only=["export-hf", "export-safetensors"])
    assert doc["trials"] == 2
    assert doc["failures"] == [] and doc["survived"] == 2
    assert set(doc["commands"]) == {"export-hf", "export-safetensors"}


def test_stale_temps_of_a_killed_run_are_cleaned_by_the_next(tiny_llama, tmp_path):
    """Kill an export while its temporary output exists; the next run to that output removes it."""
    out = tmp_path / "m.safetensors"
    env = dict(os.environ, SLMCTL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "slmctl", "export", str(tiny_llama), "--format", "safetensors",
                             "-o", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not kill.temps_beside(out):
        time.sleep(0.002)
    if proc.poll() is not None:
        pytest.skip("the export finished before its temporary file could be seen")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert kill.temps_beside(out), "the killed run should have left its temporary behind"
    assert not out.exists()
    r = kill.slmctl("export", str(tiny_llama), "--format", "safetensors", "-o", str(out), env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert kill.temps_beside(out) == []
    from slmctl.io.artifact import open_artifact

    art = open_artifact(out)
    assert len(art.tensors) > 0 and all(t.load().numel() == t.numel for t in art.tensors.values())


def test_temps_of_a_live_run_are_left_alone(tmp_path):
    """clean_stale_temps removes only temporaries whose owner process is gone."""
    from slmctl.io.atomic import TMP_MARK, clean_stale_temps

    out = tmp_path / "o"
    live = tmp_path / f".o{TMP_MARK}{os.getpid()}-abcd"
    dead_pid = 2**22 + random.randint(1, 1000)  # above the usual pid_max, so no such process
    dead = tmp_path / f".o{TMP_MARK}{dead_pid}-abcd"
    other = tmp_path / f".other{TMP_MARK}{dead_pid}-abcd"
    for p in (live, dead, other):
        p.write_text("x")
    clean_stale_temps(out)
    assert live.exists() and not dead.exists() and other.exists()


def test_output_moved_aside_by_a_killed_force_run_is_restored(tmp_path):
    """A --force run that died between its two renames leaves the old output aside: it comes back."""
    from slmctl.io.atomic import TMP_MARK, atomic_path

    out = tmp_path / "o"
    dead_pid = 2**22 + 17
    aside = tmp_path / f".o{TMP_MARK}{dead_pid}-old-abcd1234"
    aside.mkdir()
    (aside / "model.safetensors").write_text("previous")
    half = tmp_path / f".o{TMP_MARK}{dead_pid}-ffff0000"  # the dead run's own unfinished output
    half.mkdir()
    from slmctl.errors import OutputError

    # the next run cleans up first: the output is back, so without --force it is refused as existing
    with pytest.raises(OutputError, match="already exists"):
        with atomic_path(out, is_dir=True):
            pass
    assert (out / "model.safetensors").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
