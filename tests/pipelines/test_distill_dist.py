"""Data-parallel distillation: 2 CPU processes (gloo) under torchrun / accelerate launch reach the same
losses and weights as 1 process with the same global batch, and leave one checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slmctl import api

from conftest import SEQ, make_student, weights

pytestmark = pytest.mark.slow  # three fresh processes importing torch and transformers: ~50 s on 2 shared cores


@pytest.fixture(scope="module")
def pair(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    return tiny_llama, make_student(tiny_llama, root / "s", num_hidden_layers=1)


def _args(teacher, student, text_file, out, batch):
    return ["distill", "-t", str(teacher), "-s", str(student), "--data", str(text_file), "-o", str(out),
            "--steps", "6", "--seq-len", str(SEQ), "--batch-size", str(batch), "--lr", "3e-3", "--heldout", "2",
            "--checkpoint-every", "2", "--no-report", "--json"]


def _launch(launcher: list[str], args: list[str]) -> dict:
    env = dict(os.environ, SLMCTL_THREADS="1", OMP_NUM_THREADS="1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    p = subprocess.run([*launcher, "-m", "slmctl", *args], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)  # only rank 0 prints: one JSON document


def _reference(teacher, student, text_file, out):
    return api.distill(str(teacher), str(student), out, data=str(text_file), steps=6, seq_len=SEQ, batch_size=4,
                       lr=3e-3, heldout=2, checkpoint_every=2, report=False)


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(launcher, pair, text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMCTL_THREADS", "1")
    teacher, student = pair
    bindir = Path(sys.executable).parent
    cmd = {"torchrun": [str(bindir / "torchrun"), "--nproc_per_node", "2", "--master_port",
                        str(29600 + os.getpid() % 300)],
           "accelerate": [str(bindir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(29900 + os.getpid() % 90)]}[launcher]
    if not shutil.which(cmd[0]):
        pytest.skip(f"{launcher} is not installed")
    one = _reference(teacher, student, text_file, tmp_path / "one")
    two = _launch(cmd, _args(teacher, student, text_file, tmp_path / "two", batch=2))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["tokens_per_step"] == one["tokens_per_step"]
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)
    wa, wb = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    # one checkpoint, written by rank 0 only
    ck = tmp_path / "two.ckpt"
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint.json", "checkpoint.pt"]
    assert json.loads((ck / "checkpoint.json").read_text())["step"] == 4
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporaries left behind
