"""--device / --threads and the layer engine's device paths: parsing and errors (CUDA mocked where named so),
activations spilled to disk give bit-identical outputs, out-of-memory names the layer, CLI exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from slmctl.device import (  # noqa: E402
    DeviceMemoryError,
    available_devices,
    configure,
    parse_threads,
    resolve_device,
)
from slmctl.errors import UsageError  # noqa: E402


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("SLMCTL_DEVICE", raising=False)


@pytest.fixture
def fake_two_gpus(monkeypatch):
    """MOCK: torch.cuda reports two devices (no GPU is touched: only parsing is under test)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("SLMCTL_DEVICE", raising=False)


def test_cpu_and_auto_without_an_accelerator(no_gpu):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    if "mps" not in available_devices():
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")  # default: auto


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_absent_cuda_is_a_usage_error_naming_what_was_found(no_gpu, spec):
    with pytest.raises(UsageError) as e:
        resolve_device(spec)
    assert e.value.exit_code == 2
    assert "torch sees no CUDA device" in str(e.value) and "found: cpu" in e.value.hint


@pytest.mark.parametrize("spec", ["meta", "xpu", "gpu", "cuda:x", "cpu:1", "", "tpu:0"])
def test_unknown_and_fake_devices_fail_clearly(no_gpu, spec):
    with pytest.raises(UsageError) as e:
        resolve_device(spec)
    assert "found here: cpu" in (e.value.hint or "") or "the CPU has no index" in str(e.value) or \
        "use --device cpu" in (e.value.hint or "")


def test_mocked_cuda_devices_are_picked_and_checked(fake_two_gpus):
    assert available_devices()[:3] == ["cpu", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:0")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(UsageError) as e:
        resolve_device("cuda:2")
    assert "cuda:0, cuda:1" in e.value.hint


def test_environment_device_is_checked_too(no_gpu, monkeypatch):
    monkeypatch.setenv("SLMCTL_DEVICE", "cuda")
    with pytest.raises(UsageError):
        resolve_device(None)
    monkeypatch.setenv("SLMCTL_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")


def test_threads_flag_and_environment(monkeypatch):
    saved = torch.get_num_threads()
    # configure() writes both variables: set (empty) through monkeypatch first so teardown restores them
    monkeypatch.setenv("SLMCTL_THREADS", "")
    monkeypatch.setenv("SLMCTL_DEVICE", "")
    try:
        assert parse_threads(None) is None
        assert configure("cpu", 1) == {"device": "cpu", "threads": 1}
        assert torch.get_num_threads() == 1 and os.environ["SLMCTL_THREADS"] == "1"
        monkeypatch.setenv("SLMCTL_THREADS", "2")
        assert parse_threads(None) == 2
        for bad in ("0", "-3", "many"):
            monkeypatch.setenv("SLMCTL_THREADS", bad)
            with pytest.raises(UsageError, match="SLMCTL_THREADS"):
                parse_threads(None)
        with pytest.raises(UsageError, match="--threads"):
            parse_threads(0)
    finally:
        torch.set_num_threads(saved)


def test_out_of_memory_names_the_layer_and_the_bytes():
    """A layer whose forward raises torch's OutOfMemoryError, run on a stand-in accelerator (the meta device;
    the layer's own moves are recorded, not made): exit 1, layer named, bytes given, hint, layer sent back."""
    from slmctl.layerwise import run_layer

    class Boom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 64)

        def forward(self, h):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    layer = Boom()
    moves = []
    layer.to = lambda dev: moves.append(str(dev)) or layer  # MOCK: no accelerator here; record the moves
    with pytest.raises(DeviceMemoryError) as e:
        run_layer(layer, [torch.zeros(1, 8, 64)], {}, device=torch.device("meta"), what="decoder layer 7")
    assert e.value.exit_code == 1
    assert "decoder layer 7" in str(e.value) and "MiB" in str(e.value)
    assert "--batch-size" in e.value.hint and "--device cpu" in e.value.hint
    assert moves == ["meta", "cpu"]  # to the device for the forward, back to the CPU after it failed


def _prune(src, out, text_file, **kw):
    from slmctl import api

    return api.prune(str(src), out, data=str(text_file), samples=4, seqlen=32, eval_windows=0, **kw)


def test_spilled_activations_give_identical_outputs(tiny_models, text_file, tmp_path, monkeypatch):
    """Over the activation budget (1 byte here) every layer boundary goes to disk beside the output and is
    read back batch by batch: the pruned tensors are bit-identical and the temporary folder is gone."""
    from safetensors.torch import load_file

    from slmctl.layerwise import LayerwiseModel

    src = tiny_models["qwen2"]
    _prune(src, tmp_path / "memory", text_file, method="sparsegpt", sparsity=0.5, adaptive=True)
    made = []
    orig = LayerwiseModel.__init__

    def spy(self, *a, **kw):
        orig(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(LayerwiseModel, "__init__", spy)
    monkeypatch.setenv("SLMCTL_ACTIVATION_BUDGET", "1")
    logs = []
    rep = _prune(src, tmp_path / "spilled", text_file, method="sparsegpt", sparsity=0.5, adaptive=True,
                 log=logs.append)
    assert rep["device"]["device"] == "cpu" and rep["device"]["spill"]["spilled"]
    a, b = load_file(str(tmp_path / "memory" / "model.safetensors")), load_file(str(tmp_path / "spilled" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any("kept on disk" in m for m in logs)
    spill_dirs = [Path(m.split(" kept on disk in ")[1]) for m in logs if " kept on disk in " in m]
    spill = made[0].device_report()["spill"]
    assert spill["spilled"] and spill["layer_boundaries"] >= 2 and spill["bytes"] > 0 and spill["budget_bytes"] == 1
    assert spill_dirs and all(d.parent == tmp_path and not d.exists() for d in spill_dirs)  # beside the output, removed


def test_engine_refuses_a_fake_device(tiny_models):
    from slmctl import api
    from slmctl.layerwise import LayerwiseModel

    art, _ = api.load_artifact(str(tiny_models["llama"]))
    with pytest.raises(UsageError, match="unknown device 'meta'"):
        LayerwiseModel(art, device="meta")
    assert LayerwiseModel(art, device="cpu").device_report()["device"] == "cpu"


def test_cli_device_and_threads_errors_exit_2_and_write_nothing(cli, tiny_models, text_file, tmp_path):
    out = tmp_path / "never"
    for verb, extra in (("prune", ["-o", str(out)]), ("quantize", ["-o", str(out)]), ("eval", [])):
        code, stdout, stderr = cli(verb, str(tiny_models["llama"]), *extra, "--data", str(text_file),
                                   "--device", "cuda:7")
        assert code == 2 and stdout == "" and "cuda:7" in stderr and "found" in stderr, (verb, stderr)
        assert "Traceback" not in stderr
    code, _, stderr = cli("prune", str(tiny_models["llama"]), "-o", str(out), "--threads", "0")
    assert code == 2 and "--threads" in stderr
    assert not out.exists()
