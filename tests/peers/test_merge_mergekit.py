"""Parity with mergekit itself: the same YAML through `mergekit-yaml` and `slmctl merge`, tensor by tensor.

Slow (make test-slow). Needs mergekit in its own venv: `.peers/mergekit` (python3 -m venv, then
pip install torch==2.13.0 first, then mergekit) or MERGEKIT_YAML=/path/to/mergekit-yaml. Skips otherwise.
Deterministic methods must agree within 1e-6 (max abs); DARE's random drop is checked for
mergekit's semantics: the kept fraction and the L1 rescale of the kept deltas.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import build_tiny, peer_bin
from conftest import load_dir, perturbed_copy

MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", str(peer_bin("mergekit", "mergekit-yaml"))))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MERGEKIT.is_file(), reason=f"mergekit not installed at {MERGEKIT}")]


def run_mergekit(cfg: Path, out: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([str(MERGEKIT), str(cfg), str(out), "--quiet", "--random-seed", "0"],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]


def run_slmctl(cfg: Path, out: Path) -> None:
    from slmctl import api

    api.merge([], out, config=cfg)


def configs(a: Path, b: Path, c: Path) -> dict[str, str]:
    return {
        "linear": f"""merge_method: linear
models:
  - {{model: {a}, parameters: {{weight: 0.7}}}}
  - {{model: {b}, parameters: {{weight: [0.1, 0.9]}}}}
  - model: {c}
    parameters:
      weight: [{{filter: self_attn, value: 0.5}}, {{value: 0.2}}]
""",
        "slerp": f"""merge_method: slerp
base_model: {a}
models: [{{model: {a}}}, {{model: {b}}}]
parameters:
  t:
    - {{filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}}
    - {{filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}}
    - {{value: 0.5}}
""",
        "task_arithmetic": f"""merge_method: task_arithmetic
base_model: {a}
models:
  - {{model: {b}, parameters: {{weight: 0.6}}}}
  - {{model: {c}, parameters: {{weight: [0.2, 1.0]}}}}
parameters: {{lambda: 0.9}}
""",
        "ties": f"""merge_method: ties
base_model: {a}
models:
  - {{model: {a}}}
  - {{model: {b}, parameters: {{weight: 1.0, density: 0.5}}}}
  - {{model: {c}, parameters: {{weight: 0.5, density: [0.3, 0.8]}}}}
""",
        "passthrough": f"""merge_method: passthrough
slices:
  - sources: [{{model: {a}, layer_range: [0, 2]}}]
  - sources: [{{model: {b}, layer_range: [1, 2], parameters: {{scale: 0.5}}}}]
  - sources: [{{model: {c}, layer_range: [0, 1]}}]
""",
        "breadcrumbs_ties": f"""merge_method: breadcrumbs_ties
base_model: {a}
models:
  - {{model: {b}, parameters: {{weight: 1.0, density: 0.6, gamma: 0.05}}}}
  - {{model: {c}, parameters: {{weight: 0.5, density: 0.6}}}}
""",
        "model_stock": f"""merge_method: model_stock
base_model: {a}
models: [{{model: {b}}}, {{model: {c}}}]
""",
        "nearswap": f"""merge_method: nearswap
base_model: {a}
models: [{{model: {a}}}, {{model: {b}}}]
parameters: {{t: 0.01}}
""",
    }


def max_diff(x: dict, y: dict) -> float:
    assert sorted(x) == sorted(y), sorted(set(x) ^ set(y))
    worst = 0.0
    for k in x:
        assert x[k].shape == y[k].shape and x[k].dtype == y[k].dtype, k
        worst = max(worst, (x[k].double() - y[k].double()).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def tiny_trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("mkparity")
    a = build_tiny("llama", root / "a", seed=0)
    return root, a, perturbed_copy(a, root / "b", 1), perturbed_copy(a, root / "c", 2)


@pytest.mark.parametrize("method", list(configs(Path("a"), Path("b"), Path("c"))))
def test_deterministic_parity_tiny(tiny_trio, method):
    root, a, b, c = tiny_trio
    cfg = root / f"{method}.yml"
    cfg.write_text(configs(a, b, c)[method])
    run_mergekit(cfg, root / f"mk-{method}")
    run_slmctl(cfg, root / f"slm-{method}")
    assert max_diff(load_dir(root / f"slm-{method}"), load_dir(root / f"mk-{method}")) <= 1e-6


def dare_semantics(out: dict, base: dict, other: dict, density: float) -> None:
    """Each tensor's delta is the original delta on a kept subset, scaled to keep its L1 norm."""
    for k in base:
        delta = other[k] - base[k]
        got = out[k] - base[k]
        kept = got != 0
        if delta.numel() >= 1000:
            assert abs(kept.float().mean().item() - density) < 0.06, k
        scale = delta.abs().sum() / delta[kept].abs().sum()
        assert torch.allclose(got[kept], delta[kept] * scale, rtol=1e-3, atol=1e-6), k


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_semantics_match_mergekit(tiny_trio, method):
    root, a, b, _ = tiny_trio
    cfg = root / f"{method}.yml"
    cfg.write_text(f"merge_method: {method}\nbase_model: {a}\nmodels:\n"
                   f"  - {{model: {b}, parameters: {{weight: 1.0, density: 0.4}}}}\n")
    run_mergekit(cfg, root / f"mk-{method}")
    run_slmctl(cfg, root / f"slm-{method}")
    base, other = load_dir(a), load_dir(b)
    dare_semantics(load_dir(root / f"mk-{method}"), base, other, 0.4)
    dare_semantics(load_dir(root / f"slm-{method}"), base, other, 0.4)


@pytest.fixture(scope="module")
def sample_trio(tmp_path_factory):
    from slmctl.api import load_artifact

    _, path = load_artifact("sample:smollm2-135m")
    root = tmp_path_factory.mktemp("mksample")
    a = root / "a"
    shutil.copytree(path, a)
    return root, a, perturbed_copy(a, root / "b", 1, 0.002), perturbed_copy(a, root / "c", 2, 0.002)


@pytest.mark.parametrize("method", ["linear", "slerp", "task_arithmetic", "ties", "passthrough"])
def test_deterministic_parity_sample(sample_trio, method, record_property):
    root, a, b, c = sample_trio
    cfg = root / f"{method}.yml"
    cfg.write_text(configs(a, b, c)[method])
    run_mergekit(cfg, root / f"mk-{method}")
    run_slmctl(cfg, root / f"slm-{method}")
    diff = max_diff(load_dir(root / f"slm-{method}"), load_dir(root / f"mk-{method}"))
    record_property("max_abs_diff", diff)
    print(f"sample {method}: max |slmctl - mergekit| = {diff:.3g}")  # shown with -s / -rP, for the record
    assert diff <= 1e-6
    shutil.rmtree(root / f"mk-{method}")
    shutil.rmtree(root / f"slm-{method}")


PEFT_SCRIPT = r"""
import sys, torch
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model
base, adapter, merged = sys.argv[1:4]
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True,
                 rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 3}, init_lora_weights=False)
pm = get_peft_model(model, cfg)
pm.save_pretrained(adapter)
pm.merge_and_unload().save_pretrained(merged)
"""


def test_lora_fold_matches_peft(tiny_trio):
    """A real PEFT adapter (rsLoRA, rank/alpha patterns) folded by slmctl equals PEFT's merge_and_unload."""
    root, a, _, _ = tiny_trio
    py = MERGEKIT.parent / "python"
    r = subprocess.run([str(py), "-c", PEFT_SCRIPT, str(a), str(root / "adapter"), str(root / "peft-merged")],
                       capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    if r.returncode != 0 and "No module named 'peft'" in r.stderr:
        pytest.skip("peft is not installed beside mergekit")
    assert r.returncode == 0, r.stderr[-3000:]
    from slmctl import api

    api.merge([str(a)], root / "slm-lora", lora=str(root / "adapter"))
    got, want = load_dir(root / "slm-lora"), load_dir(root / "peft-merged")
    want = {k: v for k, v in want.items() if k in got}
    assert max_diff(got, want) <= 1e-6
    assert max_diff(got, {k: v for k, v in load_dir(a).items()}) > 1e-3  # the adapter did something
