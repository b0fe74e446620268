"""The CLI contract: stdout is the result, errors are one clear line on stderr with the right exit code."""

import json
import os
import pickle
import shutil

import pytest
import torch

from conftest import FAMILIES, run_cli


def test_help_is_fast_and_lists_commands(cli):
    code, out, err = cli("--help")
    assert code == 0
    for verb in ("inspect", "export", "eval"):
        assert verb in out


def test_inspect_json(cli, tiny_models):
    for fam, path in tiny_models.items():
        code, out, err = cli("inspect", str(path), "--json")
        assert code == 0, err
        info = json.loads(out)
        assert info["format"] == "hf"
        assert info["model_type"] == FAMILIES[fam]["model_type"]  # e.g. gemma3 is gemma3_text
        assert info["parameters"] > 1000
        assert info["tokenizer"]["vocab_size"] == json.loads((path / "config.json").read_text())["vocab_size"]


def test_export_hf_roundtrip_and_provenance(cli, tiny_llama, tmp_path):
    out = tmp_path / "copy"
    code, stdout, err = cli("export", str(tiny_llama), "--format", "hf", "-o", str(out), "--max-shard-size", "40KB")
    assert code == 0, err
    assert stdout.strip() == str(out)  # only the path on stdout
    assert len(list(out.glob("model-*.safetensors"))) > 1
    from transformers import AutoModelForCausalLM

    a = AutoModelForCausalLM.from_pretrained(tiny_llama)
    b = AutoModelForCausalLM.from_pretrained(out)
    x = torch.tensor([[1, 5, 9, 30, 2]])
    assert torch.equal(a(x).logits, b(x).logits)
    prov = json.loads((out / "slmctl.json").read_text())
    assert prov["verb"] == "export" and len(prov["inputs"][0]["sha256"]) == 64
    code, stdout, _ = cli("inspect", str(out), "--json")
    assert json.loads(stdout)["provenance"][0]["recipe"]["format"] == "hf"


def test_export_dtype_and_single_file(cli, tiny_llama, tmp_path):
    out = tmp_path / "m.safetensors"
    code, stdout, err = cli("export", str(tiny_llama), "--format", "safetensors", "--dtype", "bfloat16", "-o", str(out))
    assert code == 0, err
    from safetensors import safe_open

    with safe_open(out, "pt") as f:
        assert f.get_tensor("model.norm.weight").dtype == torch.bfloat16
        assert "slmctl.provenance" in f.metadata()


def test_export_is_deterministic(cli, tiny_llama, tmp_path):
    for name in ("a", "b"):
        assert cli("export", str(tiny_llama), "-o", str(tmp_path / name))[0] == 0
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()


def test_existing_output_needs_force(cli, tiny_llama, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    code, stdout, err = cli("export", str(tiny_llama), "-o", str(out))
    assert code == 1 and "already exists" in err and "--force" in err and stdout == ""
    assert (out / "keep").read_text() == "x"
    code, _, err = cli("export", str(tiny_llama), "-o", str(out), "--force")
    assert code == 0, err
    assert not (out / "keep").exists() and (out / "model.safetensors").exists()


def test_symlink_output_refused(cli, tiny_llama, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    code, _, err = cli("export", str(tiny_llama), "-o", str(link), "--force")
    assert code == 1 and "symbolic link" in err
    assert list(target.iterdir()) == []


def test_inputs_never_modified(cli, tiny_llama, tmp_path):
    before = {p.name: p.read_bytes() for p in tiny_llama.iterdir() if p.is_file()}
    assert cli("export", str(tiny_llama), "-o", str(tmp_path / "x"), "--dtype", "float16")[0] == 0
    after = {p.name: p.read_bytes() for p in tiny_llama.iterdir() if p.is_file()}
    assert before == after


@pytest.mark.parametrize("name,content,needle", [
    ("missing", None, "does not exist"),
    ("x.weird", b"hello world, no format", "unknown model format"),
    ("x.gguf", b"NOTGGUF" + b"\0" * 40, "not a GGUF file"),
    ("x.safetensors", (10**9).to_bytes(8, "little") + b"{}", "past the end"),
])
def test_bad_inputs_exit_1(cli, tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, out, err = cli("inspect", str(path))
    assert code == 1, err
    assert needle in err and err.startswith("error: ")
    assert "Traceback" not in err and out == ""


def test_truncated_safetensors_leaves_no_output(cli, tiny_llama, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    code, _, err = cli("export", str(bad), "-o", str(tmp_path / "out"))
    assert code == 1 and "truncated" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if "slmctl-tmp" in p.name] == []


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/slmctl-pwned",))


def test_pickle_refused_without_flag(cli, tmp_path):
    p = tmp_path / "pytorch_model.bin"
    p.write_bytes(pickle.dumps({"w": Evil()}))
    code, _, err = cli("inspect", str(p))
    assert code == 1 and "pickle" in err and "--allow-pickle" in err
    # with the flag, weights_only loading still refuses to run the payload
    code, _, err = cli("inspect", str(p), "--allow-pickle")
    assert code == 1 and "weights-only" in err
    assert not os.path.exists("/tmp/slmctl-pwned")


def test_pickle_state_dict_with_flag(cli, tmp_path):
    p = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3, 4)}, p)
    code, out, err = cli("inspect", str(p), "--allow-pickle", "--json")
    assert code == 0, err
    assert json.loads(out)["parameters"] == 12


def test_usage_error_exit_2(cli):
    code, _, err = cli("export")
    assert code == 2
    code, _, err = cli("export", "x", "-o", "y", "--format", "nope")
    assert code == 2 and "unknown export format" in err


def test_unknown_sample(cli):
    code, _, err = cli("inspect", "sample:nope")
    assert code == 2 and "sample:smollm2-135m" in err


def test_hub_id_without_network(tmp_path):
    r = run_cli("inspect", "no-such-org-xyz/no-such-model", env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert r.returncode == 1
    assert "cannot download no-such-org-xyz/no-such-model" in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_env_shows_traceback(tmp_path):
    r = run_cli("inspect", str(tmp_path / "missing"), env={"SLMCTL_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_shell_pipeline(tiny_llama, tmp_path):
    """stdout is the path, so commands chain with $(...) and with '-' on stdin."""
    import subprocess
    import sys

    script = f"""
set -euo pipefail
slm() {{ {sys.executable} -m slmctl "$@"; }}
p=$(slm export {tiny_llama} --format hf --dtype float16 -o {tmp_path}/chain)
slm inspect "$p" --json > {tmp_path}/a.json
echo "$p" | slm inspect - --json > {tmp_path}/b.json
"""
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a == b and a["dtypes"] == {"F16": a["parameters"]}


def test_broken_pipe_is_quiet(tiny_llama):
    import subprocess
    import sys

    r = subprocess.run(["bash", "-c", f"{sys.executable} -m slmctl inspect {tiny_llama} | head -c 10"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_inspect_verify_detects_changed_input(cli, tiny_llama, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    a = tmp_path / "a"
    assert cli("export", str(src), "-o", str(a))[0] == 0
    b = tmp_path / "b.safetensors"
    assert cli("export", str(a), "--format", "safetensors", "-o", str(b))[0] == 0
    code, out, err = cli("inspect", str(b), "--verify", "--json")
    assert code == 0, err
    v = json.loads(out)["verify"]
    assert v["ok"] and v["checked"] == 2  # both steps' inputs found and unchanged
    # change the first step's input: verify must say so and exit 1
    (src / "config.json").write_text((src / "config.json").read_text().replace("32", "32 "))
    code, out, err = cli("inspect", str(b), "--verify")
    assert code == 1 and "changed since it was recorded" in err and str(src) in err
    assert "mismatch" in out
