"""Calibration sources: the offline mix and its held-out split, unseen domains, weighted sources, folders,
chat rendering, deterministic windows, the hub's offline error, and the per-domain reports."""

from __future__ import annotations

import hashlib
import json

import pytest

from slmctl import calib
from slmctl.errors import InputError, UsageError


@pytest.fixture(scope="module")
def tok(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_models["llama"]))


def _hashes(docs):
    return {hashlib.sha256((d.text or json.dumps(d.messages)).encode()).hexdigest() for d in docs}


def test_mix_regions_never_overlap_and_unseen_domains_share_no_text():
    cal = calib.parts("sample:mix", purpose="calib")
    ev = calib.parts("sample:mix", purpose="eval")
    assert [p.label.split("/")[-1] for p in cal] == [p for p, _ in calib.MIX_PARTS]
    assert abs(sum(p.weight for p in cal) - 1) < 1e-9
    for a, b in zip(cal, ev):
        assert a.docs and b.docs, a.label
        assert not {d.key for d in a.docs} & {d.key for d in b.docs}
        assert not _hashes(a.docs) & _hashes(b.docs)
    mix = set().union(*(_hashes(p.docs) for p in cal + ev))
    # no text in common either: every word 13-gram of the mix (both regions) and of all of Shakespeare, against
    # each unseen document (what is shared is boilerplate: rules of dashes, `super().__init__(*args, **kwargs)`)
    grams = calib.ngrams(calib.shakespeare("all")).union(*(calib.ngrams(calib.part_text(p)) for p in cal + ev))
    for dom in calib.UNSEEN:
        docs = calib.parts(f"sample:unseen:{dom}", purpose="eval")[0].docs
        assert sum(len(d.text) for d in docs) > 20_000, dom
        assert not _hashes(docs) & mix, dom
        o = calib.overlap(docs, grams)
        assert o["shared_pct"] < 0.2 and o["worst_doc_pct"] < 2, (dom, o)
    sizes = calib.describe_mix()
    assert all(r["calib_chars"] > r["eval_chars"] > 0 for r in sizes)


def test_windows_are_deterministic_and_follow_the_weights(tok, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("alpha beta gamma delta\n" * 3000)
    b.write_text("one two three four five\n" * 3000)
    data = [f"{a}:0.75", f"{b}:0.25"]
    w1, info = calib.draw_windows(tok, data, n=8, ctx=32, seed=0)
    w2, _ = calib.draw_windows(tok, data, n=8, ctx=32, seed=0)
    w3, _ = calib.draw_windows(tok, data, n=8, ctx=32, seed=1)
    assert w1 == w2 and w1 != w3 and all(len(w) == 32 for w in w1)
    assert [r["windows"] for r in info["parts"]] == [6, 2]
    assert len(info["sha256"]) == 64 and info["windows_sha256"] == hashlib.sha256(json.dumps(w1).encode()).hexdigest()
    with pytest.raises(UsageError, match="every --data source a weight"):
        calib.parts([f"{a}:0.5", str(b)])
    # a part too short for its share gives what it has and the rest goes to the others
    short = tmp_path / "short.txt"
    short.write_text("tiny text " * 12)
    have = len(tok(short.read_text(), add_special_tokens=False)["input_ids"]) // 32
    wins, info = calib.draw_windows(tok, [f"{short}:0.5", f"{a}:0.5"], n=8, ctx=32, seed=0)
    assert 0 < have < 4 and len(wins) == 8 and [r["windows"] for r in info["parts"]] == [have, 8 - have]


def test_folders_and_chat_messages_rendered_through_the_template(tok, tmp_path):
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.md").write_text("# Title\n\nSome documentation text.\n" * 50)
    (d / "sub" / "b.py").write_text("def f(x):\n    return x + 1\n" * 50)
    (d / ".hidden.txt").write_text("never read")
    (d / "chat.jsonl").write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]})
        for i in range(40)) + "\n")
    docs = calib.parts(str(d))[0].docs
    assert [x.key.rsplit("/", 1)[-1].split(":")[0] for x in docs][:2] == ["a.md", "chat.jsonl"]
    assert not any("never read" in (x.text or "") for x in docs)
    assert sum(x.messages is not None for x in docs) == 40
    plain = calib.part_text(calib.parts(str(d / "chat.jsonl"))[0], tok)
    assert plain.startswith("user: question 0\nassistant: answer 0\n")
    tok2 = type(tok).from_pretrained(tok.name_or_path)
    tok2.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}")
    wins, info = calib.draw_windows(tok2, str(d / "chat.jsonl"), n=2, ctx=16, seed=0)
    text = tok2.decode(sum(wins, []))
    assert info["chat_template"] and "|>answer" in text and "assistant: " not in text


def test_hub_dataset_offline_error_and_unknown_samples(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="cannot fetch hub dataset someorg/somedata") as e:
        calib.parts("hf:someorg/somedata")
    assert "sample:mix" in e.value.hint
    with pytest.raises(UsageError, match="unknown text sample"):
        calib.parts("sample:nope")
    with pytest.raises(UsageError, match="unknown unseen domain"):
        calib.parts("sample:unseen:poetry")
    assert calib.split_weight("x.jsonl:0.5") == ("x.jsonl", 0.5)
    assert calib.split_weight("sample:shakespeare:calib") == ("sample:shakespeare:calib", None)


def test_eval_gives_one_row_per_domain(cli, tiny_llama, text_file, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("def f(x):\n    return x * 2\n" * 400)
    code, out, err = cli("eval", str(tiny_llama), "--reference", str(tiny_llama), "--data", str(text_file),
                         "--data", str(other), "--ctx", "16", "--windows", "2", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert [d["data"] for d in rep["domains"]] == [str(text_file), str(other)]
    assert all(d["kld"]["mean"] < 1e-6 and d["windows"] == 2 for d in rep["domains"])
    assert rep["domains"][0]["ppl"] != rep["domains"][1]["ppl"]
    code, out, err = cli("eval", str(tiny_llama), "--data", str(text_file), "--data", str(other), "--ctx", "16",
                         "--windows", "1")
    assert code == 0 and str(other) in out and "ppl" in out.splitlines()[1]
    code, _, err = cli("eval", str(tiny_llama), "--data", f"{text_file}:0.5", "--data", f"{other}:0.5")
    assert code == 2 and "weights" in err


def test_prune_and_quantize_default_to_the_mix_and_report_an_unseen_domain(cli, tiny_llama, tmp_path):
    out = tmp_path / "pruned"
    code, stdout, err = cli("prune", str(tiny_llama), "-o", str(out), "--method", "wanda", "--samples", "4",
                            "--seqlen", "32", "--eval-ctx", "32", "--eval-windows", "1", "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    doms = rep["quality"]["domains"]
    assert [(d["data"], d["role"]) for d in doms] == [("sample:mix", "calibration"), (calib.UNSEEN_REPORT, "unseen")]
    inputs = json.loads((out / "slmctl.json").read_text())["inputs"]
    rec = next(i for i in inputs if i.get("role") == "calibration")
    assert rec["ref"] == "sample:mix" and rec["calibration"]["mix_version"] == calib.MIX_VERSION
    assert [p["part"].split("/")[-1] for p in rec["calibration"]["parts"]] == [p for p, _ in calib.MIX_PARTS]
    # quantize's report too: the calibration domain and one it never saw, named on stderr
    code, stdout, err = cli("quantize", str(tiny_llama), "-o", str(tmp_path / "q"), "--method", "gptq", "-g", "32",
                            "--samples", "4", "--seq-len", "32", "--eval-ctx", "32", "--eval-windows", "1", "--json")
    assert code == 0, err
    doms = json.loads(stdout)["report"]["domains"]
    assert [(d["data"], d["role"]) for d in doms] == [("sample:mix", "calibration"), (calib.UNSEEN_REPORT, "unseen")]
    assert "[calibration]" in err and f"{calib.UNSEEN_REPORT}" in err and "[unseen]" in err
