"""One from_pretrained for every verb (slmctl.hf.load_model): float32, eval mode, remote code off by default."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from conftest import build_tiny
from slmctl.errors import UnsupportedError
from slmctl.hf import load_model

PKG = Path(__file__).resolve().parents[2] / "slmctl"


def test_loads_a_float32_model_in_eval_mode(tmp_path):
    import torch

    folder = build_tiny("llama", tmp_path / "m")
    for path in (folder, folder / "model.safetensors"):  # a folder, or a file inside it
        model = load_model(path)
        assert not model.training
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_remote_code_is_not_run_unless_asked(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "slmctl-remote-test", "architectures": ["X"],
         "auto_map": {"AutoConfig": "modeling_x.XConfig", "AutoModelForCausalLM": "modeling_x.X"}}))
    (folder / "modeling_x.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(UnsupportedError) as e:
        load_model(folder)
    assert str(folder) in str(e.value) and "--trust-remote-code" in e.value.hint
    assert not marker.exists()


def test_models_are_built_only_through_the_helper():
    """Every AutoModel*.from_pretrained call in the package is slmctl.hf's, except transformers' own GGUF import."""
    allowed = {"hf.py", "io/convert.py"}
    found = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).as_posix()
        for node in ast.walk(ast.parse(p.read_text())):
            f = getattr(node, "func", None)
            if (isinstance(node, ast.Call) and isinstance(f, ast.Attribute) and f.attr == "from_pretrained"
                    and isinstance(f.value, ast.Name) and (f.value.id.startswith("AutoModel") or f.value.id == "cls")
                    and rel not in allowed):
                found.append(f"{rel}:{node.lineno}")
    assert not found, found
