"""The GPTQ-layout output, loaded by the real loader: GPTQModel (7.6.0, in its own environment).

GPTQModel pins its own torch/transformers stack, so it lives in .peers/gptqmodel (built by
``make peers``; override with $SLMCTL_GPTQMODEL_PYTHON). The peer loads slmctl's output on the CPU
with its torch kernel (``BACKEND.GPTQ_TORCH``; its fp16/bf16-only dtype check widened to float32,
so the unquantised tensors are not rounded) and writes the logits of a few token ids; they must match slmctl's
own dequantised model within 1e-3.

By hand, for any GPTQ-layout folder (e.g. the quantised sample)::

    .venv/bin/python tests/peers/test_quantize_gptqmodel.py OUT_DIR [--tokens 64]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import peer_bin

PEER = Path(os.environ.get("SLMCTL_GPTQMODEL_PYTHON", str(peer_bin("gptqmodel"))))
READY = PEER.is_file() and (PEER.parent.parent / ".ok").exists() if "SLMCTL_GPTQMODEL_PYTHON" not in os.environ \
    else PEER.is_file()

# runs in the GPTQModel environment: load with GPTQModel's own loader, print nothing but errors
PEER_SCRIPT = r'''
import json, sys, torch
from gptqmodel import BACKEND, GPTQModel
from gptqmodel.nn_modules.qlinear.torch import TorchLinear
# the torch kernel's maths (unpack, scale * (q - zero), matmul) is dtype-generic; it only advertises
# fp16/bf16, which would round the unquantised tensors: allow float32 so the check compares grids only
TorchLinear.SUPPORTS_DTYPES = [*TorchLinear.SUPPORTS_DTYPES, torch.float32]
path, ids_file, out = sys.argv[1:4]
m = GPTQModel.load(path, device="cpu", backend=BACKEND.GPTQ_TORCH, dtype=torch.float32)
kinds = sorted({type(mod).__name__ for mod in m.model.modules() if hasattr(mod, "qweight")})
ids = torch.tensor(json.load(open(ids_file)), dtype=torch.long)
with torch.no_grad():
    logits = m.model(input_ids=ids).logits.float()
torch.save({"logits": logits, "kernels": kinds}, out)
'''


def gptqmodel_logits(model_dir: str | os.PathLike, ids: list[list[int]], peer: Path = PEER) -> dict:
    """Logits of ``ids`` from GPTQModel's load of ``model_dir`` (run in the peer environment)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="slmctl-gptqmodel-") as td:
        td = Path(td)
        (td / "ids.json").write_text(json.dumps(ids))
        (td / "peer.py").write_text(PEER_SCRIPT)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
        r = subprocess.run([str(peer), str(td / "peer.py"), str(model_dir), str(td / "ids.json"), str(td / "out.pt")],
                           capture_output=True, text=True, env=env)
        if r.returncode:
            raise RuntimeError(f"GPTQModel failed to load {model_dir}:\n{r.stderr[-3000:]}")
        return torch.load(td / "out.pt")


def compare(model_dir: str | os.PathLike, ids: list[list[int]]) -> dict:
    """Max abs difference between GPTQModel's logits and slmctl's dequantised model's, on ``ids``."""
    import torch

    from slmctl.io.artifact import open_artifact
    from slmctl.io.quantized_formats import load_dequantized_model

    theirs = gptqmodel_logits(model_dir, ids)
    ours = load_dequantized_model(open_artifact(Path(model_dir)))
    with torch.no_grad():
        mine = ours(input_ids=torch.tensor(ids, dtype=torch.long)).logits.float()
    diff = (theirs["logits"] - mine).abs()
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "logit_scale": float(mine.abs().max()), "kernels": theirs["kernels"], "tokens": mine.shape[1]}


@pytest.mark.slow  # GPTQModel's import alone takes tens of seconds on the shared machine
@pytest.mark.skipif(not READY, reason=f"GPTQModel environment missing ({PEER}; build it with `make peers`)")
# (the tiny llama: GPTQModel's tokenizer fix-up sets pad_token_id from the tokenizer, which lies
# outside the tiny qwen models' 300-token vocabulary)
@pytest.mark.parametrize("extra", [(), ("--asym",), ("--no-static-groups",), ("--bits", "8")],
                         ids=["sym", "asym", "act-order-g_idx", "8bit"])
def test_gptq_layout_loads_in_gptqmodel(cli, tiny_llama, tmp_path, text_file, extra):
    out = tmp_path / "gptq"
    code, _, err = cli("quantize", str(tiny_llama), "-g", "32", "-o", str(out), "--no-report",
                       "--data", str(text_file), "--samples", "4", "--seq-len", "32", *extra)
    assert code == 0, err
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["desc_act"] is ("--no-static-groups" in extra)
    ids = [[5, 17, 99, 3, 250, 41, 7, 8, 120, 64, 11, 200]]
    got = compare(out, ids)
    assert got["kernels"], "GPTQModel loaded no quantised linear"
    assert got["max_abs_diff"] <= 1e-3, got


from conformance import QUANT_CASES, build_shape  # noqa: E402

GPTQ_CASES = [c for c in QUANT_CASES if c.fmt == "gptq" and not c.refuse]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    made = {}

    def get(name):
        if name not in made:
            made[name] = build_shape(name, root / name)
        return made[name]

    return get


@pytest.mark.slow
@pytest.mark.skipif(not READY, reason=f"GPTQModel environment missing ({PEER}; build it with `make peers`)")
@pytest.mark.parametrize("case", GPTQ_CASES, ids=[c.id for c in GPTQ_CASES])
def test_conformance_matrix_gptq_cases_load_in_gptqmodel(case, shapes, cli, tmp_path, text_file):
    """Every GPTQ-layout combination slmctl accepts in the conformance matrix (widths 576/896/1536, the
    pruned 1000-wide FFN, groups the width does not divide, linears kept float by --skip-incompatible)
    loads in GPTQModel and gives slmctl's dequantised logits."""
    out = tmp_path / "gptq"
    method = [] if "--method" in case.extra else ["--method", "rtn"]
    code, _, err = cli("quantize", str(shapes(case.shape)), "-o", str(out), "--no-report", "--data", str(text_file),
                       "--samples", "4", "--seq-len", "32", *method, *case.args())
    assert code == 0, err
    got = compare(out, [[5, 17, 99, 3, 250, 41, 7, 8, 120, 64, 11, 200]])
    assert got["kernels"], "GPTQModel loaded no quantised linear"
    assert got["max_abs_diff"] <= 1e-3 * max(1.0, got["logit_scale"]), got


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args(argv)
    from slmctl.calib import load_text
    from slmctl.eval.backends import load_tokenizer
    from slmctl.io.artifact import open_artifact

    tok = load_tokenizer(open_artifact(Path(a.model_dir)))
    text = load_text("sample:shakespeare", purpose="eval", field="text")
    ids = [tok(text[:20000], add_special_tokens=False)["input_ids"][: a.tokens]]
    print(json.dumps(compare(a.model_dir, ids), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
