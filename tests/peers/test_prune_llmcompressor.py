"""Parity with llm-compressor: its WandaPruningModifier / SparseGPTModifier and slmctl on the same token ids.

Slow (make test-slow). llm-compressor pins transformers <= 5.17, so it lives in its own venv
(.peers/llmcompressor, built by `make peers`) or SLMCTL_LLMCOMPRESSOR_PYTHON; skips otherwise.
Wanda has no weight update and the same sequential scheme, so its masks must be identical; SparseGPT's
OBS update rounds differently (Hessian scaled per sample there, per token here), so its masks must agree
on at least 99% of the weights.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import peer_bin

torch = pytest.importorskip("torch")

PEER = Path(os.environ.get("SLMCTL_LLMCOMPRESSOR_PYTHON", str(peer_bin("llmcompressor"))))
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not PEER.is_file(), reason=f"llm-compressor not installed at {PEER}")]

SCRIPT = r'''
import json, sys, torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
src, out, ids_file, which, mask = sys.argv[1:6]
ids = json.load(open(ids_file))
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
cls = WandaPruningModifier if which == "wanda" else SparseGPTModifier
oneshot(model=model, dataset=ds, recipe=cls(sparsity=0.5, mask_structure=mask, targets=["Linear"], ignore=["re:.*lm_head"]),
        max_seq_length=len(ids[0]), num_calibration_samples=len(ids), shuffle_calibration_samples=False,
        pipeline="sequential")
model.save_pretrained(out, save_compressed=False)
'''


@pytest.mark.parametrize("method,pattern", [("wanda", None), ("wanda", "2:4"), ("sparsegpt", None),
                                            ("sparsegpt", "2:4")])
def test_same_masks_as_llmcompressor(tiny_llama, text_file, tmp_path, method, pattern):
    from safetensors.torch import load_file

    from slmctl import api
    from slmctl.eval.backends import load_tokenizer
    from slmctl.pipelines.prune import calibration_ids

    art, _ = api.load_artifact(str(tiny_llama))
    ids = calibration_ids(load_tokenizer(art), data=str(text_file), field="text", samples=4, seqlen=32, seed=0)
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    (tmp_path / "peer.py").write_text(SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([str(PEER), str(tmp_path / "peer.py"), str(tiny_llama), str(tmp_path / "peer"),
                        str(tmp_path / "ids.json"), method, pattern or "0:0"], capture_output=True, text=True,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    api.prune(str(tiny_llama), tmp_path / "ours", method=method, pattern=pattern, data=str(text_file), samples=4,
              seqlen=32, eval_windows=0)
    theirs = load_file(str(tmp_path / "peer" / "model.safetensors"))
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    lin = [n for n in ours if n.endswith("_proj.weight")]
    assert len(lin) == 14
    for n in lin:
        agree = float(((ours[n] == 0) == (theirs[n] == 0)).float().mean())
        if method == "wanda":
            assert agree == 1.0 and torch.equal(ours[n], theirs[n]), n
        else:
            assert agree >= 0.99, (n, agree)
