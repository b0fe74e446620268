"""Typed recipes (slmctl.recipe): validation names the option (exit 2), the recipe travels through
provenance and back, exporters refuse options they do not take, and the one gate (slmctl.eval.compare)."""

import json

import pytest

from slmctl import recipe as R
from slmctl.errors import GateFailed, UsageError


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("cls, kwargs, named", [
    (R.PruneRecipe, {"method": "depth"}, "--layers"),
    (R.PruneRecipe, {"sparsity": 1.5}, "--sparsity"),
    (R.PruneRecipe, {"method": "width", "heads_ratio": 1.0}, "--heads-ratio"),
    (R.PruneRecipe, {"method": "depth", "pattern": "2:4", "layers": 1}, "--pattern"),
    (R.PruneRecipe, {"samples": 0}, "--samples"),
    (R.PruneRecipe, {"eval_windows": 0, "max_ppl_increase": 5.0}, "--max-ppl-increase"),
    (R.QuantizeRecipe, {"report": False, "max_ppl_increase": 1.0}, "--max-ppl-increase"),
    (R.QuantizeRecipe, {"seq_len": 0}, "--seq-len"),
    (R.EvalRecipe, {"max_kld": 0.1}, "--max-kld"),
    (R.EvalRecipe, {"reference": "r", "min_top1": 101.0}, "--min-top1"),
    (R.EvalRecipe, {"ctx": 0}, "--ctx"),
    (R.DistillRecipe, {"steps": 0}, "--steps"),
    (R.DistillRecipe, {"lr": 0.0}, "--lr"),
    (R.DistillRecipe, {"beta": 2.0}, "--beta"),
    (R.DistillRecipe, {"warmup": -1}, "--warmup"),
    (R.ProfileRecipe, {"repeats": 0}, "--repeats"),
    (R.ProfileRecipe, {"sweep": "depth"}, "depth-width"),
    (R.MergeRecipe, {"gamma": 1.5}, "--gamma"),
])
def test_invalid_options_are_usage_errors_naming_the_option(cls, kwargs, named):
    with pytest.raises(UsageError) as e:
        cls(**kwargs)
    assert named in str(e.value) + (e.value.hint or "")
    assert e.value.exit_code == 2


def test_recipes_are_frozen_and_unknown_options_named():
    r = R.PruneRecipe(method="wanda")
    with pytest.raises(Exception):
        r.sparsity = 0.9  # frozen
    with pytest.raises(UsageError, match="--sparsty"):
        R.PruneRecipe.build(None, sparsty=0.5)
    assert R.PruneRecipe.build(r, sparsity=0.25) == R.PruneRecipe(method="wanda", sparsity=0.25)
    assert R.DistillRecipe().training()["steps"] == 200 and "report" not in R.DistillRecipe().training()


def test_every_verb_has_a_versioned_recipe_that_round_trips_through_json():
    assert set(R.RECIPES) == {"prune", "quantize", "eval", "export", "merge", "distill", "profile", "card"}
    for verb, cls in R.RECIPES.items():
        rec = cls().record()
        assert rec["schema"] == f"{verb}/{cls.schema}"
        back = R.from_provenance({"typed_recipe": json.loads(json.dumps(rec))})
        assert back == cls(), verb
    with pytest.raises(UsageError, match="prune/99"):
        R.PruneRecipe.from_dict({}, schema="prune/99")  # written by a newer slmctl
    assert R.from_provenance({"recipe": {"method": "wanda"}}) is None  # a record made before typed recipes


def test_a_record_older_than_a_behaviour_changing_default_reads_back_as_it_was_made():
    # quantize/2 added GPTQ's scale search, on by default; a quantize/1 record was made without it
    old = R.from_provenance({"typed_recipe": {"schema": "quantize/1", "fields": {"method": "gptq"}}})
    assert old.scale_search is False and old.method == "gptq"
    assert R.QuantizeRecipe.from_dict({"method": "gptq"}, schema="quantize/2").scale_search is True
    assert R.QuantizeRecipe().record()["fields"]["scale_search"] is True


@pytest.mark.parametrize("args, named", [
    (["prune", "M", "-o", "X", "--method", "width"], "--heads-ratio"),
    (["prune", "M", "-o", "X", "--eval-windows", "0", "--max-ppl-increase", "1"], "--max-ppl-increase"),
    (["quantize", "M", "--no-report", "--max-ppl-increase", "1"], "--max-ppl-increase"),
    (["distill", "-t", "T", "-s", "S", "-o", "X", "--beta", "3"], "--beta"),
    (["eval", "M", "--max-kld", "1"], "--reference"),
])
def test_cli_refuses_before_opening_the_model(cli, args, named):
    """M, T, S do not exist: the recipe is refused (exit 2) before any model is looked up (that would be exit 1)."""
    code, out, err = cli(*args)
    assert code == 2, err
    assert named in err and out == ""


# ---------------------------------------------------------------- provenance
def test_prune_and_quantize_record_their_recipe_in_the_output(tiny_llama, tmp_path, text_file):
    from slmctl import api
    from slmctl.io.artifact import open_artifact

    asked = R.PruneRecipe(method="magnitude", sparsity=0.25, data=str(text_file), eval_windows=0)
    api.prune(str(tiny_llama), tmp_path / "p", asked)
    prov = open_artifact(tmp_path / "p").provenance()
    assert prov["typed_recipe"]["schema"] == "prune/1"
    # the report's options are not kept in the artifact (a run with other ones writes the same bytes)
    assert "eval_windows" not in prov["typed_recipe"]["fields"]
    assert R.from_provenance(prov) == asked.artifact_part() == R.PruneRecipe(method="magnitude", sparsity=0.25,
                                                                              data=str(text_file))
    assert prov["recipe"]["method"] == "magnitude"  # what was done stays beside what was asked

    q = R.QuantizeRecipe(method="rtn", bits=8, group_size=32, report=False)
    api.quantize(str(tmp_path / "p"), tmp_path / "q", q)
    prov = open_artifact(tmp_path / "q").provenance()
    assert R.from_provenance(prov) == q.artifact_part() and q.artifact_part().report is True

    # export: the recipe reaches the provenance whichever exporter writes it
    api.export(str(tiny_llama), tmp_path / "e.safetensors", "safetensors", dtype="float16")
    prov = open_artifact(tmp_path / "e.safetensors").provenance()
    assert R.from_provenance(prov) == R.ExportRecipe(fmt="safetensors", dtype="float16")


# ---------------------------------------------------------------- exporters take only their options
@pytest.mark.parametrize("fmt, extra, named", [
    ("hf", ["--outtype", "q4_0"], "--outtype"),
    ("safetensors", ["--imatrix", "x.dat"], "--imatrix"),
    ("onnx", ["--outtype", "q8_0"], "--outtype"),
    ("hf", ["--method", "gptq"], "--method"),
])
def test_export_refuses_an_option_its_format_does_not_take(cli, tiny_llama, tmp_path, fmt, extra, named):
    out = tmp_path / "o"
    code, stdout, err = cli("export", str(tiny_llama), "--format", fmt, "-o", str(out), *extra)
    assert code == 2, err
    assert named in err and f"--format {fmt}" in err and not out.exists() and stdout == ""


def test_export_api_refuses_too(tiny_llama, tmp_path):
    from slmctl import api

    with pytest.raises(UsageError, match="--outtype"):
        api.export(str(tiny_llama), tmp_path / "o", "hf", outtype="q4_0")


# ---------------------------------------------------------------- the one gate
def test_gates_read_both_report_shapes_and_raise_gate_failed():
    from slmctl.eval.compare import check_gates, enforce, gates

    quality = {"ppl_before": 10.0, "ppl_after": 12.0, "ppl_increase_pct": 20.0, "kld_mean": 0.5,
               "top1_agreement_pct": 80.0}
    evalrep = {"reference_ppl": 10.0, "ppl": 12.0, "ppl_increase_pct": 20.0, "kld": {"mean": 0.5},
               "top1_agreement_pct": 80.0}
    limits = {"max_ppl_increase": 10.0, "max_kld": 0.1, "min_top1": 90.0}
    assert gates(quality, **limits) == gates(evalrep, **limits) and len(gates(quality, **limits)) == 3
    assert gates(quality, max_ppl_increase=25.0) == []
    with pytest.raises(UsageError, match="reference"):
        gates({"ppl": 3.0}, max_kld=1.0)  # no reference, nothing to gate against
    res = {}
    check_gates(res, [("a", quality), ("b", dict(quality, ppl_increase_pct=1.0))], max_ppl_increase=10.0)
    assert res["gates"]["passed"] is False and [f[:3] for f in res["gates"]["failed"]] == ["a: "]
    with pytest.raises(GateFailed) as e:
        enforce(res)
    assert e.value.exit_code == 3 and e.value.failed == res["gates"]["failed"]
    enforce({"gates": {"passed": True, "failed": []}})  # passes quietly


def test_gate_failed_maps_to_exit_3_in_main(monkeypatch, capsys):
    """One place turns GateFailed into exit 3 and 'gate failed:' lines on stderr (after the result)."""
    from slmctl.cli import app

    def boom(*a, **k):
        raise GateFailed("1 quality gate(s) failed", failed=["perplexity rose 9%"])

    monkeypatch.setattr(app, "app", boom)
    assert app.main(["eval", "x"]) == 3
    err = capsys.readouterr().err
    assert "gate failed: perplexity rose 9%" in err and "error:" not in err


def test_distill_gate_exits_3_and_keeps_the_output(cli, tiny_llama, text_file, tmp_path, monkeypatch):
    """distill's gates compare the distilled student with the teacher, through the same compare.gates."""
    monkeypatch.setenv("SLMCTL_THREADS", "1")
    out = tmp_path / "d"
    common = ("-t", str(tiny_llama), "-s", str(tiny_llama), "--data", str(text_file), "--steps", "1",
              "--seq-len", "16", "--batch-size", "2", "--heldout", "1", "--eval-data", str(text_file),
              "--eval-windows", "1", "--eval-ctx", "16", "--json")
    code, stdout, err = cli("distill", *common, "-o", str(out), "--max-ppl-increase", "-100")
    assert code == 3, err
    assert "gate failed: perplexity rose" in err and (out / "config.json").is_file()
    rep = json.loads(stdout)
    assert rep["gates"]["passed"] is False and rep["eval"]["distilled"]["ppl"] > 0
    from slmctl.io.artifact import open_artifact

    typed = R.from_provenance(open_artifact(out).provenance())
    assert typed.verb == "distill" and typed.steps == 1 and typed.seq_len == 16 and typed.max_ppl_increase is None
    code, stdout, err = cli("distill", *common, "-o", str(tmp_path / "d2"), "--min-top1", "0")
    assert code == 0, err
    assert json.loads(stdout)["gates"] == {"passed": True, "failed": []}


def test_merge_report_and_gate(cli, tiny_llama, text_file, tmp_path):
    """merge's optional report (the merged model against the base) and its gate, through compare."""
    code, _, err = cli("merge", str(tiny_llama), str(tiny_llama), "-o", str(tmp_path / "x"), "--max-kld", "1")
    assert code == 2 and "--eval-windows" in err and not (tmp_path / "x").exists()
    import shutil

    twin = shutil.copytree(tiny_llama, tmp_path / "twin")
    out = tmp_path / "m"
    args = ("merge", str(tiny_llama), str(twin), "-m", "linear", "--eval-data", str(text_file),
            "--eval-windows", "1", "--eval-ctx", "16", "--json")
    code, stdout, err = cli(*args, "-o", str(out), "--max-ppl-increase", "-100")
    assert code == 3, err
    assert "gate failed: perplexity rose" in err and (out / "config.json").is_file()
    doc = json.loads(stdout)
    rep = doc["report"]
    assert doc["method"] == "linear" and doc["gates"]["passed"] is False
    # the linear merge of a model with itself is that model: no divergence from the base
    assert rep["kld_mean"] < 1e-6 and rep["top1_agreement_pct"] == 100.0 and "eval" not in rep
    code, stdout, err = cli(*args, "-o", str(tmp_path / "m2"), "--max-kld", "0.001")
    assert code == 0, err


# ---------------------------------------------------------------- shared options
def test_shared_options_are_one_declaration_packed_for_the_verb():
    import inspect as _inspect
    import typing

    from slmctl.cli.options import Report, Run, verb_options

    seen = {}

    @verb_options("eval_ctx", "max_kld", "force", "json", eval_ctx=64)
    def cmd(model: str, run: Run = Run(), report: Report = Report()) -> int:
        seen.update(run=run, report=report)
        return 0

    params = _inspect.signature(cmd).parameters
    assert list(params) == ["model", "eval_ctx", "max_kld", "force", "json"]
    assert params["eval_ctx"].default == 64 and params["force"].default is False
    # Typer reads the option's spelling from the Annotated metadata of the added parameter
    info = typing.get_args(params["max_kld"].annotation)[1]
    assert info.default == "--max-kld"
    cmd("m", force=True, max_kld=0.5)
    assert seen["run"].force and not seen["run"].json and not seen["run"].runtime
    assert seen["report"].fields == {"eval_ctx": 64, "max_kld": 0.5}
    with pytest.raises(ValueError, match="no shared option"):
        verb_options("nope")


def test_every_verb_spells_the_shared_options_the_same_way():
    """--force, --json, the gates, the report's windows: one declaration, one help text, wherever a verb offers them."""
    import typer

    from slmctl.cli.app import app

    group = typer.main.get_command(app)
    texts: dict[str, set] = {}
    for verb in ("prune", "quantize", "merge", "distill", "eval", "export", "card", "inspect", "profile"):
        for p in group.commands[verb].params:
            if p.name in ("force", "json", "quiet", "allow_pickle", "max_ppl_increase", "max_kld", "min_top1"):
                texts.setdefault(p.name, set()).add((tuple(p.opts), p.help))
    assert {"force", "json", "max_ppl_increase", "max_kld"} <= set(texts)
    assert all(len(v) == 1 for v in texts.values()), texts
