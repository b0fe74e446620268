"""slmctl distill on tiny models: KD lowers the student's KL to the teacher; tokenizer checks; resume is
bit-identical; the teacher top-k cache is reused; hidden-state loss, LLKD selection and WSD run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slmctl import api
from slmctl.errors import InputError, OutputError
from conftest import SEQ, make_student, weights  # noqa: E402  (shared helpers)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # tiny models run fastest on one thread, and the CI box is shared
    monkeypatch.setenv("SLMCTL_THREADS", "1")


@pytest.fixture(scope="module")
def student(tiny_llama, tmp_path_factory) -> Path:
    return make_student(tiny_llama, tmp_path_factory.mktemp("student") / "s", num_hidden_layers=1)


def run(teacher, student, out, text_file, **kw):
    opts = dict(data=str(text_file), steps=8, seq_len=SEQ, batch_size=4, lr=3e-3, heldout=2, report=False, seed=0)
    opts.update(kw)
    return api.distill(str(teacher), str(student), out, **opts)


def test_kd_lowers_loss_and_heldout_kl(tiny_llama, student, text_file, tmp_path):
    out = tmp_path / "distilled"
    rep = run(tiny_llama, student, out, text_file, steps=20, eval_every=10)
    hist = rep["history"]
    assert len(hist) == 20 and all(h["kd"] >= 0 for h in hist)
    first = sum(h["loss"] for h in hist[:3]) / 3
    last = sum(h["loss"] for h in hist[-3:]) / 3
    assert last < 0.7 * first
    before, after = rep["heldout"]["before"], rep["heldout"]["after"]
    assert after["kl"] < 0.7 * before["kl"]
    assert any("heldout" in h for h in hist)  # evaluation during training
    # the output is a loadable HF folder with provenance, same tensors as the student
    from slmctl.io.artifact import open_artifact

    art = open_artifact(out)
    prov = art.provenance()
    assert prov["verb"] == "distill" and prov["recipe"]["steps"] == 20
    assert [i["role"] for i in prov["inputs"]] == ["teacher", "student"]
    assert set(weights(out)) == set(weights(student))
    assert (out / "tokenizer.json").is_file() and (out / "slmctl.json").is_file()
    assert any(not torch.equal(weights(out)[k], weights(student)[k]) for k in weights(out))


def test_cli_prints_only_the_path_and_reports(cli, tiny_llama, student, text_file, tmp_path):
    out = tmp_path / "d"
    code, stdout, stderr = cli("distill", "-t", str(tiny_llama), "-s", str(student), "--data", str(text_file),
                               "-o", str(out), "--steps", "4", "--seq-len", str(SEQ), "--heldout", "2",
                               "--lr", "3e-3", "--eval-data", str(text_file), "--eval-windows", "3")
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert "held-out before" in stderr and "teacher ppl" in stderr
    # --json gives the report; the end-of-run eval compares teacher, start and distilled student
    code, stdout, stderr = cli("distill", "-t", str(tiny_llama), "-s", str(student), "--data", str(text_file),
                               "-o", str(out), "--force", "--json", "--steps", "6", "--seq-len", str(SEQ),
                               "--heldout", "2", "--lr", "3e-3", "--eval-data", str(text_file), "--eval-windows", "3")
    assert code == 0, stderr
    rep = json.loads(stdout)
    ev = rep["eval"]
    assert ev["windows"] == 3 and ev["teacher"]["ppl"] > 0
    assert ev["distilled"]["kld"] < ev["start"]["kld"]
    assert ev["start"]["ppl"] != ev["distilled"]["ppl"]


def test_tokenizer_mismatch_fails_before_training(cli, tiny_llama, student, text_file, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    other = tmp_path / "other"
    shutil.copytree(student, other)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["completely different words, numbers 0123456789 and more"] * 20,
                            trainers.BpeTrainer(vocab_size=280, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok.save(str(other / "tokenizer.json"))
    out = tmp_path / "never"
    code, stdout, stderr = cli("distill", "-t", str(tiny_llama), "-s", str(other), "--data", str(text_file),
                               "-o", str(out), "--steps", "3", "--seq-len", str(SEQ))
    assert code == 1
    assert "do not share a tokenizer" in stderr and "hint:" in stderr
    assert "held-out" not in stderr  # no training or evaluation happened
    assert stdout == "" and not out.exists() and not Path(str(out) + ".ckpt").exists()


def test_existing_output_fails_before_training(tiny_llama, student, text_file, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    with pytest.raises(OutputError, match="already exists"):
        run(tiny_llama, student, out, text_file, on_step=lambda s, r: pytest.fail("trained"))


def test_resume_after_interrupt_is_bit_identical(tiny_llama, student, text_file, tmp_path):
    ref = run(tiny_llama, student, tmp_path / "a", text_file, steps=8, checkpoint_every=3)
    assert (tmp_path / "a.ckpt" / "checkpoint.pt").is_file()

    def stop(step, rec):
        if step == 5:  # two steps past the checkpoint at 3: those two are lost and redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tiny_llama, student, tmp_path / "b", text_file, steps=8, checkpoint_every=3, on_step=stop)
    assert not (tmp_path / "b").exists()
    meta = json.loads((tmp_path / "b.ckpt" / "checkpoint.json").read_text())
    assert meta["step"] == 3 and meta["rows_consumed"] == 12
    rep = run(tiny_llama, student, tmp_path / "b", text_file, steps=8, checkpoint_every=3, resume=True)
    assert rep["resumed_from"] == 3
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [h["loss"] for h in rep["history"]] == [h["loss"] for h in ref["history"]]
    # a resume with other settings is refused
    with pytest.raises(Exception, match="other settings"):
        run(tiny_llama, student, tmp_path / "c", text_file, steps=8, checkpoint_every=3, resume=True,
            checkpoint_dir=tmp_path / "b.ckpt", lr=1e-3)


@pytest.mark.slow  # a fresh process importing torch and transformers: about 20 s on a shared 2-core box
def test_resume_after_sigkill_is_bit_identical(cli, tiny_llama, student, text_file, tmp_path):
    args = ["-t", str(tiny_llama), "-s", str(student), "--data", str(text_file), "--steps", "7",
            "--seq-len", str(SEQ), "--heldout", "2", "--lr", "3e-3", "--checkpoint-every", "2", "--no-report"]
    code, _, err = cli("distill", *args, "-o", str(tmp_path / "ref"))
    assert code == 0, err
    # a separate process that is killed with SIGKILL after step 5 (checkpoint at 4)
    script = textwrap.dedent(f"""
        import os, signal, sys
        from slmctl.cli.app import main
        import slmctl.pipelines.distill as d
        real = d.distill
        def killer(*a, **kw):
            kw["on_step"] = lambda step, rec: os.kill(os.getpid(), signal.SIGKILL) if step == 5 else None
            return real(*a, **kw)
        import slmctl.api as api
        api.distill = killer
        sys.exit(main(["distill", *{args!r}, "-o", {str(tmp_path / 'k')!r}]))
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr
    assert not (tmp_path / "k").exists()
    assert json.loads((tmp_path / "k.ckpt" / "checkpoint.json").read_text())["step"] == 4
    code, stdout, err = cli("distill", *args, "-o", str(tmp_path / "k"), "--resume")
    assert code == 0, err
    assert "resumed" in err and stdout.strip() == str(tmp_path / "k")
    wa, wb = weights(tmp_path / "ref"), weights(tmp_path / "k")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_teacher_cache_is_built_once_and_reused(tiny_llama, student, text_file, tmp_path):
    cache = tmp_path / "cache"
    logs: list[str] = []
    rep1 = run(tiny_llama, student, tmp_path / "c1", text_file, steps=6, teacher_cache=cache, topk=16,
               log=logs.append)
    entries = list(cache.iterdir())
    assert len(entries) == 1 and (entries[0] / "values.npy").is_file()
    assert any("computing top-16 logits for 24 block(s)" in m for m in logs)
    assert rep1["heldout"]["after"]["kl"] < rep1["heldout"]["before"]["kl"]
    mtime = (entries[0] / "values.npy").stat().st_mtime_ns
    logs.clear()
    run(tiny_llama, student, tmp_path / "c2", text_file, steps=6, teacher_cache=cache, topk=16, log=logs.append)
    assert any("found" in m for m in logs) and (entries[0] / "values.npy").stat().st_mtime_ns == mtime
    # a longer run computes only the blocks it lacks
    logs.clear()
    run(tiny_llama, student, tmp_path / "c3", text_file, steps=10, teacher_cache=cache, topk=16, log=logs.append)
    msg = next(m for m in logs if "computing" in m)
    assert "(24 cached)" in msg
    assert len(list(cache.iterdir())) == 1
    # a cache holding the whole vocabulary trains like the teacher on the fly
    full = run(tiny_llama, student, tmp_path / "c4", text_file, steps=6, teacher_cache=tmp_path / "c_all", topk=320)
    live = run(tiny_llama, student, tmp_path / "c5", text_file, steps=6)
    assert full["heldout"]["after"]["kl"] == pytest.approx(live["heldout"]["after"]["kl"], rel=0.02)


def test_hidden_loss_with_projection_for_a_narrower_student(tiny_llama, text_file, tmp_path):
    narrow = make_student(tiny_llama, tmp_path / "narrow", hidden_size=16, num_attention_heads=2,
                          num_key_value_heads=1, intermediate_size=32)
    rep = run(tiny_llama, narrow, tmp_path / "h", text_file, steps=12, hidden_loss="cosine", hidden_weight=1.0)
    h = [r["hidden"] for r in rep["history"]]
    assert all(v == v and v >= 0 for v in h)
    assert sum(h[-3:]) < sum(h[:3])
    assert set(weights(tmp_path / "h")) == set(weights(narrow))  # the projector is not part of the model


def test_llkd_selection_with_wsd_and_grad_accum(tiny_llama, student, text_file, tmp_path):
    rep = run(tiny_llama, student, tmp_path / "s", text_file, steps=10, select="llkd", select_keep=0.5,
              schedule="wsd", warmup=2, batch_size=2, grad_accum=2, loss="jsd")
    kept = [r["kept"] for r in rep["history"]]
    assert all(2 <= k <= 4 for k in kept) and min(kept) < 4
    lrs = [r["lr"] for r in rep["history"]]
    assert lrs[2] == lrs[5] == pytest.approx(3e-3) and lrs[-1] < lrs[5]
    assert rep["heldout"]["after"]["kl"] < rep["heldout"]["before"]["kl"]


def test_cross_entropy_only_is_plain_fine_tuning(tiny_llama, student, text_file, tmp_path):
    rep = run(tiny_llama, student, tmp_path / "ce", text_file, steps=10, kd_weight=0.0, ce_weight=1.0, lr=1e-2)
    assert all("ce" in r and "kd" not in r for r in rep["history"])
    assert rep["heldout"]["after"]["ppl"] < 0.9 * rep["heldout"]["before"]["ppl"]


def test_bad_options_are_usage_errors(cli, tiny_llama, student, text_file, tmp_path):
    base = ["distill", "-t", str(tiny_llama), "-s", str(student), "--data", str(text_file), "-o", str(tmp_path / "x")]
    code, _, err = cli(*base, "--loss", "kl")
    assert code == 2 and "fkl" in err
    code, _, err = cli(*base, "--schedule", "linear")
    assert code == 2 and "wsd" in err
    code, _, err = cli(*base, "--hidden-loss", "mse", "--teacher-cache", str(tmp_path / "c"))
    assert code == 2 and "hidden" in err
    code, _, err = cli(*base, "--seq-len", "4096")
    assert code == 1 and "fewer than one block" in err


def test_jsonl_data(tiny_llama, student, text_file, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"body": line}) for line in text_file.read_text().splitlines() if line))
    rep = run(tiny_llama, student, tmp_path / "j", text_file=data, steps=2, field="body")
    assert rep["heldout"]["blocks"] == 2 and len(rep["history"]) == 2
    with pytest.raises(InputError, match="no string field"):
        run(tiny_llama, student, tmp_path / "j2", text_file=data, steps=2)


@pytest.mark.slow
def test_real_sample_smoke(tmp_path):
    """The real SmolLM2-135M distils into a copy of itself with one decoder layer fewer (a pruned student):
    two tiny steps through the top-k cache, and the end-of-run report (uses SLMCTL_CACHE's sample)."""
    from transformers import AutoModelForCausalLM

    from slmctl.api import load_artifact

    _, teacher = load_artifact("sample:smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(str(teacher), dtype=torch.float32)
    del model.model.layers[-1]
    model.config.num_hidden_layers -= 1
    student = tmp_path / "student"
    model.save_pretrained(student)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (teacher / f).is_file():
            shutil.copyfile(teacher / f, student / f)
    rep = api.distill("sample:smollm2-135m", str(student), tmp_path / "out", data="sample:shakespeare:calib",
                      steps=2, seq_len=32, batch_size=1, lr=1e-4, heldout=1, teacher_cache=tmp_path / "tc", topk=16,
                      eval_ctx=64, eval_windows=1, max_tokens=20000)
    ev = rep["eval"]
    assert ev["teacher"]["ppl"] < ev["start"]["ppl"]  # dropping a layer hurts
    assert ev["start"]["kld"] > 0 and ev["distilled"]["kld"] > 0
    assert len(rep["history"]) == 2 and all(h["kd"] > 0 for h in rep["history"])
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_freeze_embeddings_keeps_them_and_trains_the_rest(tiny_llama, student, text_file, tmp_path):
    out = tmp_path / "frozen"
    rep = run(tiny_llama, student, out, text_file, steps=4, freeze_embeddings=True)
    before, after = weights(student), weights(out)
    emb = [n for n in before if "embed_tokens" in n]
    assert emb and all(torch.equal(before[n], after[n]) for n in emb)
    assert any(not torch.equal(before[n], after[n]) for n in before if n not in emb)
    assert rep["history"][-1]["loss"] < rep["history"][0]["loss"]


def test_progress_bar_shows_loss_tokens_per_s_and_eta(tiny_llama, student, text_file, tmp_path, monkeypatch):
    import io
    import re

    from slmctl.cli.output import Output

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # draw every step, however fast the tiny model trains
    run(tiny_llama, student, tmp_path / "bar", text_file, steps=6, progress=Output().progress)
    bars = [ln for ln in term.getvalue().replace("\r", "\n").splitlines() if ln.startswith("distill:")]
    last = [ln for ln in bars if "loss=" in ln][-1]
    assert re.search(r"\b6/6 \[\d\d:\d\d<\d\d:\d\d, .*loss=\d+\.\d+, tok_s=\d+", last)  # elapsed<ETA


def test_progress_lines_without_a_terminal_show_loss_tokens_per_s_and_eta(tiny_llama, student, text_file, tmp_path):
    lines: list[str] = []
    run(tiny_llama, student, tmp_path / "lines", text_file, steps=10, log=lines.append)
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert len(steps) == 10 and all(" tokens/s, ETA " in ln and "loss " in ln for ln in steps)
