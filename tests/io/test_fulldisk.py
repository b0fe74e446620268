"""A full disk: a 64 KiB tmpfs mounted by the test (root only; skipped where mount is not allowed).

The run must exit 1 with a message that names the disk, and leave nothing behind: no partial output
and no temporary file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("fmt,name", [("hf", "out"), ("safetensors", "out.safetensors")])
def test_full_disk_exits_1_naming_the_disk_and_leaves_nothing(small_disk, tiny_llama, fmt, name):
    out = small_disk / name
    r = run_cli("export", str(tiny_llama), "--format", fmt, "-o", str(out))
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert "no space left" in r.stderr and str(small_disk) in r.stderr, r.stderr
    assert r.stdout == ""
    assert list(small_disk.iterdir()) == [], "partial output or temporaries left on the full disk"


def test_full_disk_then_room_again_succeeds(small_disk, tiny_llama, tmp_path):
    """After a failed run on a full disk, the same command succeeds once there is room."""
    out = small_disk / "out.safetensors"
    assert run_cli("export", str(tiny_llama), "--format", "safetensors", "-o", str(out)).returncode == 1
    r = subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot grow the tmpfs: {r.stderr.strip()}")
    r = run_cli("export", str(tiny_llama), "--format", "safetensors", "-o", str(out))
    assert r.returncode == 0, r.stderr
    from slmctl.io.artifact import open_artifact

    assert len(open_artifact(out).tensors) > 0
    assert [p.name for p in small_disk.iterdir() if ".slmctl-tmp-" in p.name] == []
