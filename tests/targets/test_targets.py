"""Targets and the plugin manager: built-ins, runtime plugins, entry-point plugins, broken plugins."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_cli


@pytest.fixture
def fresh_manager(monkeypatch):
    """A manager built from scratch for this test, and forgotten afterwards."""
    from slmctl.targets import manager as m

    monkeypatch.setenv(m.ENV, "")
    m.reset()
    yield m
    m.reset()


# ---------------------------------------------------------------- built-ins
def test_builtin_targets_register_through_the_hook(fresh_manager):
    from slmctl.targets import Target

    mgr = fresh_manager.manager()
    targets = mgr.targets()
    assert {"torch", "onnxruntime", "llamacpp"} <= set(targets)
    for name, (t, plugin) in targets.items():
        assert isinstance(t, Target) and t.name == name and plugin == "builtin"
    assert targets["torch"][0].formats == ("hf", "safetensors")
    assert targets["llamacpp"][0].formats == ("gguf",)
    assert targets["onnxruntime"][0].formats == ("onnx",)
    # the built-ins are a pluggy plugin like any other
    impls = mgr.pm.hook.register_targets.get_hookimpls()
    assert [i.plugin_name for i in impls] == ["builtin"]


def test_plugins_command_lists_targets_with_source_and_formats(cli, fresh_manager):
    code, out, err = cli("plugins", "--json")
    assert code == 0, err
    doc = json.loads(out)
    by = {t["name"]: t for t in doc["targets"]}
    assert by["torch"]["source"] == "builtin" and by["torch"]["formats"] == ["hf", "safetensors"]
    assert by["torch"]["available"] and "cpu" in by["torch"]["devices"]
    assert [p["name"] for p in doc["plugins"]] == ["builtin"]
    code, out, _ = cli("plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["target", "plugin", "source", "formats"]
    assert any(line.startswith("llamacpp") and "gguf" in line for line in lines)


def test_tests_never_load_installed_plugins_by_default(monkeypatch):
    from slmctl.targets import manager as m

    monkeypatch.delenv(m.ENV, raising=False)
    assert m.plugin_filter() == set()  # PYTEST_CURRENT_TEST is set while a test runs
    monkeypatch.setenv(m.ENV, "a, b,")
    assert m.plugin_filter() == {"a", "b"}
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.delenv(m.ENV)
    assert m.plugin_filter() is None  # outside tests: every installed plugin


def test_unknown_target_lists_the_valid_ones(cli, fresh_manager, tiny_llama):
    code, _, err = cli("profile", str(tiny_llama), "--target", "torhc")
    assert code == 2
    assert "unknown target 'torhc'" in err and "did you mean 'torch'" in err and "onnxruntime" in err


# ---------------------------------------------------------------- a plugin registered at runtime
class _CpuTorchPlugin:
    """A real plugin object: a torch target pinned to the CPU, in fp32."""

    from slmctl.targets import hookimpl

    @hookimpl
    def register_targets(self, register):
        from slmctl.targets.pytorch import TorchTarget

        class TorchCPU(TorchTarget):
            """PyTorch pinned to the CPU."""

            name = "torch-cpu"

            def load(self, artifact, *, device=None, log=lambda m: None):
                return super().load(artifact, device="cpu", log=log)

        register(TorchCPU)


def test_runtime_plugin_registers_and_unregisters(cli, fresh_manager, tiny_llama):
    from slmctl.errors import UsageError
    from slmctl.targets import get_target, register_plugin, unregister_plugin

    name = register_plugin(_CpuTorchPlugin(), "cpu-torch")
    try:
        assert get_target("torch-cpu").name == "torch-cpu"
        code, out, err = cli("plugins", "--json")
        assert code == 0, err
        t = {t["name"]: t for t in json.loads(out)["targets"]}["torch-cpu"]
        assert t["plugin"] == "cpu-torch" and t["source"] == "runtime" and t["formats"] == ["hf", "safetensors"]
        code, out, err = cli("profile", str(tiny_llama), "--target", "torch-cpu", "--ctx", "8", "--batch", "1",
                             "--repeats", "2", "--warmup", "0", "--decode-tokens", "2", "--no-bandwidth", "--json")
        assert code == 0, err
        rep = json.loads(out)
        assert rep["target"] == "torch-cpu" and rep["device"] == "cpu"
        assert rep["decode"][0]["p50_ms"] > 0
    finally:
        unregister_plugin(name)
    with pytest.raises(UsageError, match="unknown target 'torch-cpu'"):
        get_target("torch-cpu")
    assert "torch" in fresh_manager.manager().targets()


def test_runtime_plugin_without_hooks_is_refused(fresh_manager):
    from slmctl.targets import register_plugin
    from slmctl.targets.manager import PluginError

    class NoHooks:
        def register_targets(self, register):  # not marked with @hookimpl
            pass

    with pytest.raises(PluginError, match="plugin 'nohooks': implements no slmctl hook"):
        register_plugin(NoHooks(), "nohooks")
    assert "nohooks" not in [p.name for p in fresh_manager.manager().plugins()]


# ---------------------------------------------------------------- entry-point plugins, good and bad
PLUGINS = {
    "slmctl_t_good": """
        from slmctl.targets import hookimpl
        from slmctl.targets.pytorch import TorchTarget

        class Good(TorchTarget):
            '''torch, from an entry-point plugin.'''
            name = "good-torch"

        @hookimpl
        def register_targets(register):
            register(Good)
        """,
    "slmctl_t_raises": """
        raise RuntimeError("this plugin is broken on purpose")
        """,
    "slmctl_t_nohooks": """
        def register_targets(register):
            pass
        """,
    "slmctl_t_badhook": """
        from slmctl.targets import hookimpl

        @hookimpl
        def register_targets(register):
            raise ValueError("boom in the hook")
        """,
    "slmctl_t_notatarget": """
        from slmctl.targets import hookimpl

        @hookimpl
        def register_targets(register):
            register(object())
        """,
}
EP_NAMES = {"good": "slmctl_t_good", "raises": "slmctl_t_raises", "nohooks": "slmctl_t_nohooks",
            "badhook": "slmctl_t_badhook", "notatarget": "slmctl_t_notatarget"}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A site folder with a distribution that declares five slmctl.targets entry points."""
    d = tmp_path_factory.mktemp("site")
    for mod, src in PLUGINS.items():
        (d / f"{mod}.py").write_text(textwrap.dedent(src))
    info = d / "slmctl_test_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slmctl-test-plugins\nVersion: 0.1\n")
    eps = "[slmctl.targets]\n" + "".join(f"{k} = {v}\n" for k, v in EP_NAMES.items())
    (info / "entry_points.txt").write_text(eps)
    return d


@pytest.fixture
def on_path(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    importlib.invalidate_caches()
    yield plugin_dir
    for mod in PLUGINS:
        sys.modules.pop(mod, None)


def test_stray_installed_plugins_do_not_load_in_tests(on_path, monkeypatch):
    from slmctl.targets import manager as m

    monkeypatch.delenv(m.ENV, raising=False)
    m.reset()
    try:
        names = [p.name for p in m.manager().plugins()]
        assert names == ["builtin"]
    finally:
        m.reset()


def test_bad_plugins_are_named_and_the_others_keep_working(on_path, monkeypatch, cli, tiny_llama):
    from slmctl.targets import get_target
    from slmctl.targets import manager as m
    from slmctl.targets.manager import PluginError

    monkeypatch.setenv(m.ENV, ",".join(EP_NAMES))
    m.reset()
    try:
        infos = {p.name: p for p in m.manager().plugins()}
        assert infos["good"].error is None and infos["good"].targets == ["good-torch"]
        assert infos["good"].source == "entry point" and infos["good"].distribution == "slmctl-test-plugins"
        assert "failed to import slmctl_t_raises" in infos["raises"].error
        assert "broken on purpose" in infos["raises"].error
        assert "implements no slmctl hook" in infos["nohooks"].error
        assert "boom in the hook" in infos["badhook"].error
        assert "not object" in infos["notatarget"].error
        # every target of the working plugins is there
        assert {"torch", "onnxruntime", "llamacpp", "good-torch"} <= set(m.manager().targets())
        assert get_target("good-torch").name == "good-torch"
        with pytest.raises(PluginError, match="plugin 'raises' is broken: failed to import"):
            get_target("raises")
        code, out, err = cli("plugins", "--json")
        assert code == 0
        for bad in ("raises", "nohooks", "badhook", "notatarget"):
            assert f"plugin {bad!r} failed to load" in err
        assert {p["name"]: p["error"] is None for p in json.loads(out)["plugins"]}["good"]
        code, out, err = cli("profile", str(tiny_llama), "--target", "good-torch", "--ctx", "8", "--batch", "1",
                             "--repeats", "1", "--warmup", "0", "--decode-tokens", "1", "--no-bandwidth",
                             "--no-layers", "--json")
        assert code == 0, err
        assert json.loads(out)["target"] == "good-torch"
    finally:
        m.reset()


def test_plugins_load_from_entry_points_in_a_fresh_process(plugin_dir):
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")]),
           "SLMCTL_LOAD_PLUGINS": "good,raises"}
    r = run_cli("plugins", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "good-torch" in [t["name"] for t in doc["targets"]]
    assert "plugin 'raises' failed to load" in r.stderr
    names = [p["name"] for p in doc["plugins"]]
    assert "nohooks" not in names  # not asked for
