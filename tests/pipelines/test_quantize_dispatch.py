"""`slmctl quantize` hands GGUF inputs to llama.cpp's quantiser."""

import json

import pytest


def test_quantize_gguf_input_with_a_llama_cpp_type(cli, tiny_llama, tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    f16 = tmp_path / "m.gguf"
    code, _, err = cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "f16", "-o", str(f16))
    assert code == 0, err
    out = tmp_path / "m-q8.gguf"
    code, stdout, err = cli("quantize", str(f16), "--type", "q8_0", "-o", str(out))
    assert code == 0, err
    assert stdout.strip() == str(out)
    code, stdout, err = cli("inspect", str(out), "--json")
    info = json.loads(stdout)
    assert info["quantization"]["file_type"] == "Q8_0"
    assert "Q8_0" in info["dtypes"]
    # the record of the step sits beside the file llama.cpp wrote, chained to the f16 export
    assert [s["verb"] for s in info["provenance"]] == ["export", "quantize"]
    assert info["provenance"][-1]["recipe"]["type"] == "q8_0"
    # without -o the output lands in the working directory, named after the type
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli("quantize", str(f16), "--type", "q4_0")
    assert code == 0, err
    assert stdout.strip().endswith("m-Q4_0.gguf")


def test_quantize_gguf_without_type_is_a_usage_error(cli, tiny_llama, tmp_path):
    f16 = tmp_path / "m.gguf"
    assert cli("export", str(tiny_llama), "--format", "gguf", "--outtype", "f16", "-o", str(f16))[0] == 0
    code, _, err = cli("quantize", str(f16), "-o", str(tmp_path / "x.gguf"))
    assert code == 2 and "--type" in err
