"""One function rebuilds config.json's per-layer entries for both callers: prune (cutting layers) and merge
(stacking layers of several models). The expected configs are what each caller produced before the two
copies became one (surgery.renamed_config and merge._rebuild_layer_lists at 0604c9c)."""

from __future__ import annotations

import json
import shutil

from conftest import build_tiny
from slmctl import api
from slmctl.arch.names import block_prefix, layer_index, split_block
from slmctl.surgery.layers import drop_layers, pick_layer_lists, renamed_config


def test_prune_cut_keeps_token_ids_and_cuts_every_per_layer_entry():
    cfg = {"num_hidden_layers": 4, "layer_types": ["a", "b", "c", "d"], "architectures": ["X"] * 4,
           "eos_token_id": [1, 2, 3, 4], "hybrid_override_pattern": "M-M*", "max_window_layers": 3,
           "slmctl_per_layer": {"intermediate_size": [8, 16, 24, 32]}}
    before = json.dumps(cfg)
    assert renamed_config(cfg, [1, 2]) == {
        "num_hidden_layers": 2, "layer_types": ["a", "d"], "architectures": ["X"] * 4, "eos_token_id": [1, 2, 3, 4],
        "hybrid_override_pattern": "M*", "max_window_layers": 1, "slmctl_per_layer": {"intermediate_size": [8, 32]}}
    assert json.dumps(cfg) == before  # the input config is not modified


def test_merge_stack_picks_each_entry_from_its_source_model():
    a = {"num_hidden_layers": 3, "layer_types": ["a0", "a1", "a2"], "architectures": ["X"] * 3,
         "eos_token_id": [1, 2, 3], "slmctl_per_layer": {"intermediate_size": [8, 16, 24]}}
    b = {"num_hidden_layers": 3, "layer_types": ["b0", "b1", "b2"], "architectures": ["X"] * 3,
         "eos_token_id": [7, 8, 9], "slmctl_per_layer": {"intermediate_size": [40, 48, 56]}}
    # merge's call: the template's config, its layer count, only "architectures" left alone
    got = pick_layer_lists(a, [("a", 0), ("a", 1), ("b", 1), ("b", 2)], {"a": a, "b": b}, n=3, skip=("architectures",))
    assert got == {"num_hidden_layers": 3, "layer_types": ["a0", "a1", "b1", "b2"], "architectures": ["X"] * 3,
                   "eos_token_id": [1, 2, 8, 9], "slmctl_per_layer": {"intermediate_size": [8, 16, 48, 56]}}
    # a source without the entry, or with too short a list: the entry stays as the template has it
    short = dict(b, layer_types=["b0"])
    assert pick_layer_lists(a, [("a", 0), ("b", 2)], {"a": a, "b": short}, n=3)["layer_types"] == ["a0", "a1", "a2"]


def test_merge_verb_stacks_the_per_layer_lists(tmp_path):
    srcs = {}
    tiny = build_tiny("llama", tmp_path / "src")
    for key, tag in (("a", "x"), ("b", "y")):
        d = shutil.copytree(tiny, tmp_path / key)
        cfg = json.loads((d / "config.json").read_text())
        cfg["layer_types"] = [f"{tag}{i}" for i in range(cfg["num_hidden_layers"])]
        (d / "config.json").write_text(json.dumps(cfg))
        srcs[key] = d
    (tmp_path / "m.yml").write_text(f"""merge_method: passthrough
slices:
  - sources: [{{model: {srcs['a']}, layer_range: [0, 2]}}]
  - sources: [{{model: {srcs['b']}, layer_range: [1, 2]}}]
""")
    api.merge(config=str(tmp_path / "m.yml"), out=tmp_path / "m")
    out = json.loads((tmp_path / "m" / "config.json").read_text())
    assert out["num_hidden_layers"] == 3 and out["layer_types"] == ["x0", "x1", "y1"]


def test_block_names_across_families():
    assert split_block("model.layers.12.mlp.up_proj.weight") == ("model.layers", 12, "mlp.up_proj.weight")
    assert split_block("transformer.h.3.attn.c_attn.weight") == ("transformer.h", 3, "attn.c_attn.weight")
    assert split_block("model.decoder.layers.0.fc1.weight") == ("model.decoder.layers", 0, "fc1.weight")
    # an expert inside a block is not a block of its own
    assert split_block("model.layers.1.mlp.experts.layers.7.w1") == ("model.layers", 1, "mlp.experts.layers.7.w1")
    assert split_block("model.embed_tokens.weight") is None and layer_index("lm_head.weight") is None
    assert split_block("backbone.layers.2.mixer.D", "backbone.layers") == ("backbone.layers", 2, "mixer.D")
    assert split_block("model.layers.2.x", "backbone.layers") is None
    # the spec's prefix (through its backbone. alias) wins over a vision tower with more blocks
    names = [f"vision.blocks.{i}.w" for i in range(9)] + ["backbone.layers.0.mixer.D", "backbone.layers.1.norm.weight"]
    assert block_prefix(names, {"architectures": ["NemotronHForCausalLM"]}) == "backbone.layers"
    assert block_prefix(names) == "vision.blocks"  # without a family: the container most tensors sit in
    r = drop_layers(["transformer.h.0.ln_1.weight", "transformer.h.1.ln_1.weight", "transformer.wte.weight"], [0], 2)
    assert r == {"transformer.h.0.ln_1.weight": None, "transformer.h.1.ln_1.weight": "transformer.h.0.ln_1.weight",
                 "transformer.wte.weight": "transformer.wte.weight"}
