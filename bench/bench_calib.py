"""Calibration that generalises: the sample quantised and pruned with calibration on the old default
(Shakespeare's comedies) and on the new default (sample:mix), measured on domains none of the
calibration text came from, side by side with llm-compressor's GPTQ on the same token windows.

Writes bench/results/calib.md and calib.json. Per output: one `slmctl eval OUT --reference MODEL --data D
...` over every domain (perplexity, KL mean, top-1 agreement per domain).

Domains: unseen (no calibration text came from them): sample:unseen:code (click, typer, pluggy, tqdm
source), sample:unseen:readme (long descriptions of slmctl's installed dependencies),
sample:unseen:licenses (licence files of the installed distributions); and, for reference, each
calibration's own held-out region: sample:shakespeare (the tragedies) and sample:mix:eval.

Cost: 15 outputs (the 2 optional GGUF GPTQ rows aside), each produced once and evaluated once on 5 domains
with its fp32 reference. Chosen to keep the section near 25 minutes on 2 quiet cores: 32 calibration windows
of 512 tokens for the quantisers (as bench_quantize), the pruners' and GGUF's own defaults, and 4 evaluation
windows of 512 tokens per domain (2,048 scored tokens a domain; every output sees the same windows, so the
comparisons are paired). `slmctl eval` reloads both models per domain, which is most of an eval's time.

Settings via environment: BENCH_C_SAMPLES (32), BENCH_C_SEQLEN (512), BENCH_C_WINDOWS (4), BENCH_C_CTX (512),
BENCH_C_RUNS (comma list of run names, default all but the optional GGUF GPTQ rows), BENCH_C_OUT (bench/out/calib), BENCH_C_LOCK (the heavy-job
lock file each command holds while it runs; default none), BENCH_C_RESUME=1 (keep outputs and evals already done).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from timing import PEERS, heavy, timed, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
E = os.environ.get
SAMPLES, SEQLEN = E("BENCH_C_SAMPLES", "32"), E("BENCH_C_SEQLEN", "512")
WINDOWS, CTX = E("BENCH_C_WINDOWS", "4"), E("BENCH_C_CTX", "512")
OUT = Path(E("BENCH_C_OUT", str(ROOT / "bench" / "out" / "calib")))
LOCK = E("BENCH_C_LOCK", "")
RESUME = E("BENCH_C_RESUME") == "1"
MODEL = "sample:smollm2-135m"
PEER = Path(E("BENCH_LLMCOMPRESSOR_PYTHON", str(PEERS / "llmcompressor/bin/python")))
UNSEEN = ["sample:unseen:code", "sample:unseen:readme", "sample:unseen:licenses"]
SEEN = ["sample:shakespeare", "sample:mix:eval"]
CALIBS = {"shakespeare": "sample:shakespeare", "mix": "sample:mix"}

# llm-compressor's one-shot GPTQ on token windows given as ids (the ones slmctl draws)
PEER_SCRIPT = r'''
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from datasets import Dataset
src, out, ids_file, group = sys.argv[1:5]
ids = json.load(open(ids_file))
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(src)
groups = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                        "strategy": "group", "group_size": int(group)}}}
oneshot(model=model, dataset=ds, recipe=GPTQModifier(targets="Linear", config_groups=groups, ignore=["lm_head"]),
        max_seq_length=len(ids[0]), num_calibration_samples=len(ids), shuffle_calibration_samples=False)
model.save_pretrained(out, save_compressed=True)
tok.save_pretrained(out)
'''


def slm(*args: str) -> list[str]:
    return [sys.executable, "-m", "slmctl", *args]


def q(method: str, calib: str | None, group: int = 128) -> list[str]:
    extra = ["--samples", SAMPLES, "--seq-len", SEQLEN] + (["--data", CALIBS[calib]] if calib else [])
    return ["quantize", MODEL, "--method", method, "-g", str(group), "--sym", "--no-report", "--quiet", *extra]


def p(method: str, calib: str) -> list[str]:
    return ["prune", MODEL, "--method", method, "--sparsity", "0.5", "--eval-windows", "0", "--quiet",
            "--data", CALIBS[calib]]


def k(calib: str | None, method: str = "imatrix") -> list[str]:
    return ["export", MODEL, "--format", "gguf", "--outtype", "q4_k_m", "--quiet"] + (
        ["--method", method, "--data", CALIBS[calib]] if calib else ["--method", "rtn"])


# name -> (command without -o, output suffix, calibration, group of rows it is compared in)
RUNS = {
    "rtn w4g128": (q("rtn", None), "", None, "w4g128"),
    "gptq w4g128 / shakespeare": (q("gptq", "shakespeare"), "", "shakespeare", "w4g128"),
    "gptq w4g128 / mix": (q("gptq", "mix"), "", "mix", "w4g128"),
    "rtn w4g64": (q("rtn", None, 64), "", None, "w4g64"),
    "gptq w4g64 / mix": (q("gptq", "mix", 64), "", "mix", "w4g64"),
    "llm-compressor gptq w4g64 / mix": (None, "", "mix", "w4g64"),
    "awq w4g128 / shakespeare": (q("awq", "shakespeare"), "", "shakespeare", "w4g128"),
    "awq w4g128 / mix": (q("awq", "mix"), "", "mix", "w4g128"),
    "wanda 50% / shakespeare": (p("wanda", "shakespeare"), "", "shakespeare", "prune"),
    "wanda 50% / mix": (p("wanda", "mix"), "", "mix", "prune"),
    "sparsegpt 50% / shakespeare": (p("sparsegpt", "shakespeare"), "", "shakespeare", "prune"),
    "sparsegpt 50% / mix": (p("sparsegpt", "mix"), "", "mix", "prune"),
    "q4_k_m rtn (no calibration)": (k(None), ".gguf", None, "gguf"),
    "q4_k_m imatrix / shakespeare": (k("shakespeare"), ".gguf", "shakespeare", "gguf"),
    "q4_k_m imatrix / mix": (k("mix"), ".gguf", "mix", "gguf"),
    "q4_k_m gptq / shakespeare": (k("shakespeare", "gptq"), ".gguf", "shakespeare", "gguf"),
    "q4_k_m gptq / mix": (k("mix", "gptq"), ".gguf", "mix", "gguf"),
}


OPTIONAL = ("q4_k_m gptq / shakespeare", "q4_k_m gptq / mix")  # not in the table: only when named


def unseen_overlap() -> dict[str, dict]:
    """Each unseen domain's word 13-grams against every calibration text (both regions of the mix and all of
    Shakespeare): what share of them occurs there, overall and in the worst document."""
    from slmctl import calib

    ps = calib.parts("sample:mix", purpose="calib") + calib.parts("sample:mix", purpose="eval")
    grams = calib.ngrams(calib.shakespeare("all")).union(*(calib.ngrams(calib.part_text(p)) for p in ps))
    out = {}
    for d in UNSEEN:
        docs = calib.parts(d, purpose="eval")[0].docs
        out[d] = dict(calib.overlap(docs, grams), documents=len(docs), chars=sum(len(x.text) for x in docs))
    return out


BASES = ("gptq w4g128", "awq w4g128", "wanda 50%", "sparsegpt 50%", "q4_k_m imatrix", "q4_k_m gptq")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _dir(name: str) -> Path:
    return OUT / name.replace(" / ", "-").replace(" ", "_").replace("%", "").replace("(", "").replace(")", "")


def _peer(out: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    from slmctl.api import load_artifact
    from slmctl.eval.backends import load_tokenizer
    from slmctl.calib import calibration_windows

    art, path = load_artifact(MODEL)
    wins, _ = calibration_windows(load_tokenizer(art), data=CALIBS["mix"], field="text", samples=int(SAMPLES),
                                  seq_len=int(SEQLEN), seed=0)
    work = out.parent / (out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    (work / "ids.json").write_text(json.dumps(wins))
    (work / "peer.py").write_text(PEER_SCRIPT)
    return timed([str(PEER), str(work / "peer.py"), str(path), str(out), str(work / "ids.json"), "64"], cwd=work)


def produce(name: str) -> dict:
    cmd, suffix, calib, group = RUNS[name]
    out = _dir(name).with_suffix(suffix) if suffix else _dir(name)
    row = {"name": name, "calibration": CALIBS.get(calib), "group": group, "output": str(out.relative_to(ROOT))
           if out.is_relative_to(ROOT) else str(out)}
    info = out.parent / (out.name + ".row.json")
    if RESUME and out.exists() and info.is_file():
        row.update(json.loads(info.read_text()))
    if not (RESUME and out.exists()):
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        with heavy(LOCK):
            row["load_before"] = _load()
            r, wall, rss = _peer(out) if cmd is None else timed(slm(*cmd, "-o", str(out)))
            row.update(load_after=_load(), wall_s=round(wall, 1), peak_rss_mib=round(rss))
        if r.returncode:
            row["error"] = (r.stderr or "").strip()[-800:]
            print(f"{name} failed: {row['error']}", file=sys.stderr)
            return row
        info.write_text(json.dumps({k: row[k] for k in ("load_before", "load_after", "wall_s", "peak_rss_mib")}))
    ev = out.parent / (out.name + ".eval.json")
    if not (RESUME and ev.is_file()):
        args = ["eval", str(out), "--reference", MODEL, "--ctx", CTX, "--windows", WINDOWS, "--json", "--quiet"]
        for d in UNSEEN + SEEN:
            args += ["--data", d]
        with heavy(LOCK):
            row["eval_load_before"] = _load()
            r = subprocess.run(slm(*args), capture_output=True, text=True)
        if r.returncode:
            row["error"] = "eval: " + r.stderr.strip()[-800:]
            print(f"{name} eval failed: {row['error']}", file=sys.stderr)
            return row
        ev.write_text(r.stdout)
    res = json.loads(ev.read_text())
    row["domains"] = {d["data"]: {"ppl": d["ppl"], "ref_ppl": d["reference_ppl"], "kld": d["kld"]["mean"],
                                  "top1": d["top1_agreement_pct"]} for d in res["domains"]}
    print(f"{name}: " + ", ".join(f"{k} {v['ppl']:.3f}" for k, v in row["domains"].items()), file=sys.stderr)
    return row


def _rise(r: dict, d: str) -> float:
    x = r["domains"][d]
    return x["ppl"] / x["ref_ppl"] - 1


def checks(rows: dict[str, dict]) -> list[str]:
    ok = {n: r for n, r in rows.items() if "domains" in r}
    out = []
    g, rtn = ok.get("gptq w4g128 / mix"), ok.get("rtn w4g128")
    if g and rtn:
        for d in UNSEEN:
            ratio = _rise(g, d) / _rise(rtn, d)
            out.append(f"GPTQ w4g128 calibrated on sample:mix: perplexity rise on {d} is {ratio:.2f}x RTN's "
                       f"(target <= 0.5): {'met' if ratio <= 0.5 else 'MISSED'}")
    for base in BASES:
        a, b = ok.get(f"{base} / mix"), ok.get(f"{base} / shakespeare")
        if not (a and b):
            continue
        worst = max(((a["domains"][d]["ppl"] / b["domains"][d]["ppl"] - 1, d) for d in a["domains"]))
        out.append(f"{base}: worst domain for the mix vs Shakespeare calibration {worst[1]} {worst[0] * 100:+.2f}% "
                   f"(target: no domain worse by more than 1%): {'met' if worst[0] <= 0.01 else 'MISSED'}")
    s, peer = ok.get("gptq w4g64 / mix"), ok.get("llm-compressor gptq w4g64 / mix")
    if s and peer:
        worst = max(((s["domains"][d]["ppl"] / peer["domains"][d]["ppl"] - 1, d) for d in s["domains"]))
        out.append(f"slmctl GPTQ w4g64 vs llm-compressor's on the same mix windows: worst domain {worst[1]} "
                   f"{worst[0] * 100:+.2f}% (target: same or better on every domain): "
                   f"{'met' if worst[0] <= 0 else 'MISSED'}")
    return out


def command() -> str:
    env = [f"{k}={E(k)}" for k in ("BENCH_C_SAMPLES", "BENCH_C_SEQLEN", "BENCH_C_WINDOWS", "BENCH_C_CTX", "BENCH_C_RUNS",
                                   "BENCH_C_RESUME") if E(k)] + (["BENCH_C_LOCK=$LOCK"] if LOCK else [])
    return " ".join(env + ([f"nice -n {os.nice(0)}"] if os.nice(0) else []) + ["python bench/bench_calib.py"])


def markdown(rows: dict[str, dict], minutes: float, load_start: str, load_end: str, ov: dict) -> str:
    doms = UNSEEN + SEEN
    short = {d: d.removeprefix("sample:") for d in doms}
    base = next((r for r in rows.values() if "domains" in r), None)
    lines = ["## calibration: the offline mix vs Shakespeare, judged on unseen domains", "",
             f"SmolLM2-135M-Instruct (fp32). Calibration on `sample:shakespeare` (the comedies, the old default) or "
             f"`sample:mix` (the new default: Shakespeare comedies, Python reference docs, stdlib code, chat turns "
             f"rendered through the chat template; docs/calibration.md). Quantisers: `slmctl quantize --samples "
             f"{SAMPLES} --seq-len {SEQLEN} --sym`; pruners: `slmctl prune --sparsity 0.5` (32 x 256 tokens); "
             f"GGUF: `slmctl export --format gguf --outtype q4_k_m --method imatrix|gptq --data D` (64 x 512 tokens, "
             f"its default; `--method rtn` without calibration for the baseline). "
             f"Every output: `slmctl eval OUT --reference {MODEL} --ctx {CTX} --windows {WINDOWS} --data ...` on "
             "each domain.", "",
             "Unseen domains (no calibration text came from them): **code** = source of click, typer, pluggy, tqdm; "
             "**readme** = long descriptions (README) of slmctl's installed dependencies; **licenses** = licence "
             "files of the installed distributions. For reference, each calibration's own held-out region: "
             "shakespeare (the tragedies) and mix:eval.", "",
             "Check that the unseen domains share no text with any calibration text: word 13-grams (lower-cased, "
             "punctuation as words) of each unseen domain looked up among those of both regions of `sample:mix` and "
             "all of Shakespeare (`slmctl.calib.overlap`; click's `_textwrap.py`, which copies the standard "
             "library's textwrap, is excluded from the code domain for this reason):", "",
             "| domain | documents | characters | 13-grams | shared | worst document |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {short[d]} | {o['documents']} | {o['chars']:,} | {o['ngrams']:,} | {o['shared']} "
              f"({o['shared_pct']:.3f}%) | {o['worst_doc']} ({o['worst_doc_pct']:.2f}%) |" for d, o in ov.items()]
    lines += ["", "(What is shared is boilerplate: rules of dashes or equals signs, `super().__init__(*args, **kwargs)`.)", ""]
    if base:
        lines += ["fp32 perplexity: " + ", ".join(f"{short[d]} {base['domains'][d]['ref_ppl']:.3f}" for d in doms), ""]
    lines += ["Perplexity (KL mean) per domain:", "",
              "| run | " + " | ".join(short[d] for d in doms) + " |", "|---|" + "---:|" * len(doms)]
    for n, r in rows.items():
        if "domains" not in r:
            lines.append(f"| {n} | failed: {r.get('error', '')[:120].replace('|', '/')} |")
            continue
        lines.append(f"| {n} | " + " | ".join(f"{r['domains'][d]['ppl']:.3f} ({r['domains'][d]['kld']:.4f})"
                                               for d in doms) + " |")
    ok = {n: r for n, r in rows.items() if "domains" in r}
    if "rtn w4g128" in ok:
        lines += ["", "Perplexity rise over fp32 as a multiple of RTN w4g128's rise (lower is better):", "",
                  "| run | " + " | ".join(short[d] for d in doms) + " |", "|---|" + "---:|" * len(doms)]
        for n in ("gptq w4g128 / shakespeare", "gptq w4g128 / mix", "awq w4g128 / shakespeare", "awq w4g128 / mix"):
            if n in ok:
                lines.append(f"| {n} | " + " | ".join(f"{_rise(ok[n], d) / _rise(ok['rtn w4g128'], d):.2f}x"
                                                       for d in doms) + " |")
    lines += ["", "Mix over Shakespeare calibration, perplexity ratio per domain (below 1: the mix is better):", "",
              "| method | " + " | ".join(short[d] for d in doms) + " |", "|---|" + "---:|" * len(doms)]
    for b in BASES:
        a, s = ok.get(f"{b} / mix"), ok.get(f"{b} / shakespeare")
        if a and s:
            lines.append(f"| {b} | " + " | ".join(f"{a['domains'][d]['ppl'] / s['domains'][d]['ppl']:.4f}"
                                                  for d in doms) + " |")
    lines += ["", "What the figures say (computed from the table):", ""] + [f"- {c}" for c in checks(rows)]
    lines += ["", "llm-compressor cannot quantise this model at group size 128 (hidden size 576 is 4.5 x 128; see the "
              "quantize section), so the GPTQ side by side is at group size 64, both on the same 32 windows drawn "
              "from sample:mix (llm-compressor gets the token ids).", "",
              f"The commands ran in sequence" + (f", niced ({os.nice(0)})" if os.nice(0) else "") + ", "
              + ("each holding the heavy-job lock" if LOCK else "without the heavy-job lock")
              + f"; load average (1/5/15 min) {load_start} at the start and {load_end} at the end of this "
              f"{minutes:.0f}-minute run (each row's load before its command is in calib.json; quality figures do "
              f"not depend on load). Command: `{command()}`."]
    missing = [n for n in RUNS if n not in rows and n not in OPTIONAL and (RUNS[n][0] is not None or PEER.is_file())]
    if missing:
        lines += ["", "Not measured in this run (cut short): " + ", ".join(missing) + "."]
    return "\n".join(lines)


def main() -> int:
    only = [s.strip() for s in E("BENCH_C_RUNS", "").split(",") if s.strip()]
    names = [n for n in RUNS if n in only] if only else [n for n in RUNS if n not in OPTIONAL]
    if not PEER.is_file():
        print(f"llm-compressor is not installed at {PEER}: its row is skipped (make peers)", file=sys.stderr)
        names = [n for n in names if RUNS[n][0] is not None]
    OUT.mkdir(parents=True, exist_ok=True)
    load_start, t0 = _load(), time.time()
    ov = unseen_overlap()
    rows: dict[str, dict] = {}
    for n in names:  # the fragment is rewritten after every run, so a cut-short run keeps what it measured
        rows[n] = produce(n)
        md = markdown(rows, (time.time() - t0) / 60, load_start, _load(), ov)
        write_results("calib", {"samples": SAMPLES, "seq_len": SEQLEN, "windows": WINDOWS, "ctx": CTX,
                                "unseen": UNSEEN, "seen": SEEN, "overlap": ov, "rows": rows, "checks": checks(rows),
                                "complete": len(rows) == len(names)}, md, packages=("llmcompressor",))
    print(md)
    return 0 if all("domains" in r for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
