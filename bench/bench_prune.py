"""slmctl prune on the sample, side by side with llm-compressor, on the same calibration and held-out windows.

Runs (BENCH_P_RUNS, a comma list or "all"; default: every slmctl run, and llm-compressor's Wanda and
SparseGPT at 50%):
- slmctl: magnitude / wanda / sparsegpt at 50% unstructured, wanda and sparsegpt 2:4, depth 25% (Block
  Influence, angular block, last layers), width 25% (heads + MLP);
- ``width-25%-gguf``: the width-25% output exported to GGUF and evaluated by llama.cpp;
- ``llmc-*``: llm-compressor 0.14's WandaPruningModifier and SparseGPTModifier (50% and 2:4) through
  ``oneshot`` in its own environment (.peers/llmcompressor/bin/python, or
  $BENCH_LLMCOMPRESSOR_PYTHON), fed the token ids slmctl draws, so both see the same calibration windows.

Every output is scored the same way afterwards: ``slmctl eval OUT --reference MODEL`` on the held-out
evaluation region (perplexity, KL, top-1). The timed prune runs with ``--eval-windows 0``, so the prune
time of both tools is load + calibrate + prune + save, nothing else.

A slmctl run whose llm-compressor counterpart is selected alternates with it over BENCH_ROUNDS rounds
(default 3), each command a fresh process (bench/timing.py); the others run once. Each run's result is
saved under BENCH_P_OUT (bench/out/prune) as JSON with the run id, and the fragment (prune.json, prune.md)
is built from this run's results only, never from runs of older code. With BENCH_P_LOCK (e.g.
/tmp/slmctl-heavy.lock) each run holds that lock while it runs, so its wall time never includes the wait.
Settings: BENCH_P_SAMPLES (16), BENCH_P_SEQLEN (256), BENCH_P_WINDOWS (8), BENCH_P_CTX (256).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from timing import PEERS, alternate, compare, fmt, fmt_ratio, heavy as _heavy, load_note, portable, \
    run_id, timed, write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
E = os.environ.get
SAMPLES, SEQLEN, WINDOWS, CTX = E("BENCH_P_SAMPLES", "16"), E("BENCH_P_SEQLEN", "256"), E("BENCH_P_WINDOWS", "8"), \
    E("BENCH_P_CTX", "256")
OUT = Path(E("BENCH_P_OUT", str(ROOT / "bench" / "out" / "prune")))
LOCK = E("BENCH_P_LOCK", "")
MODEL = "sample:smollm2-135m"
PEER = Path(E("BENCH_LLMCOMPRESSOR_PYTHON", str(PEERS / "llmcompressor/bin/python")))
SLMCTL = [sys.executable, "-m", "slmctl"]
SETTINGS = {"samples": SAMPLES, "seqlen": SEQLEN, "windows": WINDOWS, "ctx": CTX, "seed": 0}

SLM_RUNS = {  # name -> prune arguments
    "magnitude-50": ["--method", "magnitude", "--sparsity", "0.5"],
    "wanda-50": ["--method", "wanda", "--sparsity", "0.5"],
    "sparsegpt-50": ["--method", "sparsegpt", "--sparsity", "0.5"],
    "wanda-2:4": ["--method", "wanda", "--pattern", "2:4"],
    "sparsegpt-2:4": ["--method", "sparsegpt", "--pattern", "2:4"],
    "depth-bi-25%": ["--method", "depth", "--ratio", "0.25", "--depth-metric", "bi"],
    "depth-angular-25%": ["--method", "depth", "--ratio", "0.25", "--depth-metric", "angular"],
    "depth-last-25%": ["--method", "depth", "--ratio", "0.25", "--depth-metric", "last"],
    "width-25%": ["--method", "width", "--heads-ratio", "0.25", "--mlp-ratio", "0.25"],
}
PEER_RUNS = {"llmc-wanda-50": ("wanda", "0:0"), "llmc-sparsegpt-50": ("sparsegpt", "0:0"),
             "llmc-wanda-2:4": ("wanda", "2:4"), "llmc-sparsegpt-2:4": ("sparsegpt", "2:4")}
ORDER = [*SLM_RUNS, "width-25%-gguf", *PEER_RUNS]
# `make bench` runs these (about 8 minutes on 2 cores); BENCH_P_RUNS=all (or a comma list) for more
DEFAULT = [*SLM_RUNS, "width-25%-gguf", "llmc-wanda-50", "llmc-sparsegpt-50"]
_sel = E("BENCH_P_RUNS", ",".join(DEFAULT))
SELECTED = [r for r in (",".join(ORDER) if _sel == "all" else _sel).split(",") if r]
# a slmctl run and the llm-compressor run of the same method alternate over this many rounds
ROUNDS = int(E("BENCH_ROUNDS", "3"))

# llm-compressor 0.14: oneshot() with a modifier; the dataset is already tokenised (input_ids), so it is
# used as it is; the sequential pipeline calibrates and prunes one decoder layer at a time, like slmctl.
PEER_SCRIPT = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
src, out, ids_file, which, mask = sys.argv[1:6]
ids = json.load(open(ids_file))
ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})
model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(src)
cls = WandaPruningModifier if which == "wanda" else SparseGPTModifier
recipe = cls(sparsity=0.5, mask_structure=mask, targets=["Linear"], ignore=["re:.*lm_head"])
t1 = time.perf_counter()
oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=len(ids[0]), num_calibration_samples=len(ids),
        shuffle_calibration_samples=False, pipeline="sequential")
t2 = time.perf_counter()
model.save_pretrained(out, save_compressed=False)
tok.save_pretrained(out)
import llmcompressor, transformers
print(json.dumps({"oneshot_s": t2 - t1, "total_s": time.perf_counter() - t0, "llmcompressor": llmcompressor.__version__,
                  "transformers": transformers.__version__, "torch": torch.__version__}))
'''


def heavy():
    return _heavy(LOCK)


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def show(cmd: list[str]) -> str:
    s = shlex.join(cmd).replace(str(OUT), "$OUT").replace(str(ROOT) + "/", "")
    return portable(s.replace(shlex.join(SLMCTL), "slmctl").replace(str(PEER), "$PEER_PY"))


def run(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    r, wall, rss = timed(cmd, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"failed ({r.returncode}): {show(cmd)}\n{r.stderr[-3000:]}")
    return r, wall, rss


def evaluate(path: str, reference: str, *extra: str) -> dict:
    r, wall, _ = run([*SLMCTL, "eval", path, "--reference", reference, "--ctx", CTX, "--windows", WINDOWS, "--json",
                      *extra])
    e = json.loads(r.stdout)
    return {"ppl": e["ppl"], "dense_ppl": e["reference_ppl"], "kld": e["kld"]["mean"],
            "top1": e["top1_agreement_pct"], "eval_backend": e.get("backend"), "eval_s": wall}


def role_params(path: str) -> dict:
    """Parameters of the attention and MLP projections (and all) from the safetensors headers."""
    from slmctl.api import load_artifact

    art, _ = load_artifact(path)
    attn = sum(t.numel for n, t in art.tensors.items() if ".self_attn." in n and n.endswith(".weight"))
    mlp = sum(t.numel for n, t in art.tensors.items() if ".mlp." in n and n.endswith(".weight"))
    return {"attn": attn, "mlp": mlp, "all": sum(t.numel for t in art.tensors.values())}


def src_path() -> str:
    from slmctl.api import load_artifact

    return str(load_artifact(MODEL)[1])


def slmctl_cmd(name: str) -> tuple[list[str], Path]:
    out = OUT / name.replace(":", "-").replace("%", "")
    return [*SLMCTL, "prune", MODEL, "-o", str(out), *SLM_RUNS[name], "--samples", SAMPLES, "--seqlen", SEQLEN,
            "--data", "sample:shakespeare", "--eval-windows", "0", "--force", "--json", "-q"], out


def run_slmctl(name: str, measured: tuple | None = None) -> dict:
    cmd, out = slmctl_cmd(name)
    stdout, wall, rss = measured or (lambda r, w, m: (r.stdout, w, m))(*run(cmd))
    rep = json.loads(stdout)
    res = {"cmd": show(cmd), "wall_s": wall, "rss_mib": rss, "prune_s": rep["prune_seconds"],
           "params_before": rep["parameters_before"], "params_after": rep["parameters_after"],
           **evaluate(str(out), src_path())}
    if "sparsity" in rep:
        res["note"] = f"{rep['sparsity']:.1%} of the decoder linear weights zero"
        res["nonzero"] = rep["nonzero_parameters_after"]
    elif "layers_removed" in rep["recipe"]:
        res["note"] = f"layers {rep['recipe']['layers_removed']} removed"
    else:
        r0 = rep["layers"][0]
        res["note"] = f"{r0['num_attention_heads']} heads / {r0['num_key_value_heads']} kv, MLP {r0['intermediate_size']}"
        res["roles_before"], res["roles_after"] = role_params(src_path()), role_params(str(out))
    return res


def run_gguf() -> dict:
    src = OUT / "width-25"
    if not (src / "config.json").is_file():
        raise RuntimeError("width-25%-gguf needs the width-25% run first")
    gguf = OUT / "width-25.f32.gguf"
    cmd = [*SLMCTL, "export", str(src), "--format", "gguf", "--outtype", "f32", "-o", str(gguf), "--force", "-q"]
    _, wall, rss = run(cmd)
    e = evaluate(str(gguf), src_path())
    return {"cmd": show(cmd) + f"; slmctl eval {show([str(gguf)])} --reference {MODEL}", "wall_s": wall,
            "rss_mib": rss, **e, "note": f"llama.cpp ({e['eval_backend']}) runs the exported GGUF"}


def peer_cmd(name: str) -> tuple[list[str], Path]:
    if not PEER.is_file():
        raise RuntimeError(f"{PEER} does not exist: build it with `make {PEER.parent.parent}/.ok`")
    from slmctl.api import load_artifact
    from slmctl.eval.backends import load_tokenizer
    from slmctl.pipelines.prune import calibration_ids

    art, src = load_artifact(MODEL)
    ids = calibration_ids(load_tokenizer(art), data="sample:shakespeare", field="text", samples=int(SAMPLES),
                          seqlen=int(SEQLEN), seed=0)
    (OUT / "ids.json").write_text(json.dumps(ids.tolist()))
    (OUT / "peer.py").write_text(PEER_SCRIPT)
    which, mask = PEER_RUNS[name]
    out = OUT / name.replace(":", "-")
    return [str(PEER), str(OUT / "peer.py"), str(src), str(out), str(OUT / "ids.json"), which, mask], out


def run_peer(name: str, measured: tuple | None = None) -> dict:
    cmd, out = peer_cmd(name)
    stdout, wall, rss = measured or (lambda r, w, m: (r.stdout, w, m))(*run(cmd))
    info = json.loads(stdout.strip().splitlines()[-1])
    return {"cmd": show(cmd), "wall_s": wall, "rss_mib": rss, "prune_s": info["total_s"], "peer": info,
            **evaluate(str(out), src_path()), "note": f"llm-compressor {info['llmcompressor']}, "
                                                    f"transformers {info['transformers']}"}


def result_file(name: str) -> Path:
    return OUT / "results" / (name.replace(":", "-").replace("%", "") + ".json")


def run_pair(name: str, peer: str) -> tuple[dict, dict]:
    """slmctl's run and llm-compressor's of the same method, alternating over ROUNDS rounds (fresh processes,
    the outputs removed before each), then each output evaluated once."""
    (a, out_a), (b, out_b) = slmctl_cmd(name), peer_cmd(peer)
    outs = {name: out_a, peer: out_b}
    runs = alternate({name: a, peer: b}, rounds=ROUNDS, before=lambda n: shutil.rmtree(outs[n], ignore_errors=True),
                     cwd=ROOT)
    timing = compare(runs, name, peer)
    got = {}
    for n, fn in ((name, run_slmctl), (peer, run_peer)):
        got[n] = fn(n, (runs[n][-1]["stdout"], timing["wall"][n]["median"], timing["rss"][n]["median"]))
        got[n].update(wall=timing["wall"][n], rounds=timing["runs"][n])
    got[name].update(time_ratio=timing["time_ratio"], rss_ratio=timing["rss_ratio"], peer=peer)
    return got[name], got[peer]


def main() -> int:
    (OUT / "results").mkdir(parents=True, exist_ok=True)
    unknown = [n for n in SELECTED if n not in ORDER]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; valid: {', '.join(ORDER)}")
    pairs = [(n, f"llmc-{n}") for n in SLM_RUNS if n in SELECTED and f"llmc-{n}" in SELECTED]
    paired = {x for p in pairs for x in p}
    jobs = [(n,) for n in SELECTED if n not in paired] + pairs
    failed = []
    for job in jobs:
        try:
            with heavy():
                load = load_avg()
                t = time.time()
                if len(job) == 2:
                    got = dict(zip(job, run_pair(*job)))
                else:
                    name = job[0]
                    got = {name: run_slmctl(name) if name in SLM_RUNS else run_gguf() if name == "width-25%-gguf"
                           else run_peer(name)}
            for name, res in got.items():
                res.update(name=name, settings=SETTINGS, run_id=run_id(), load_before=load, load_after=load_avg(),
                           finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
                result_file(name).write_text(json.dumps(res, indent=1, default=str))
                print(f"{name}: ppl {res['ppl']:.3f}, {res['wall_s']:.0f} s ({time.time() - t:.0f} s with eval)",
                      file=sys.stderr)
        except RuntimeError as exc:
            print(f"{' + '.join(job)}: {exc}", file=sys.stderr)
            failed.extend(job)
    write()
    return 1 if failed else 0


def write() -> None:
    res = {}
    for name in ORDER:
        f = result_file(name)
        if f.is_file():
            r = json.loads(f.read_text())
            if r.get("settings") == SETTINGS and r.get("run_id") == run_id():  # this run's results only
                res[name] = r
    dense = next((r["dense_ppl"] for r in res.values() if "dense_ppl" in r), None)
    L = ["## prune (SmolLM2-135M-Instruct, fp32)\n",
         f"Calibration: {SAMPLES} windows x {SEQLEN} tokens drawn (seed 0) from the sample's calibration region, the "
         f"same token ids for slmctl and llm-compressor. Quality: `slmctl eval OUT --reference {MODEL} --ctx {CTX} "
         f"--windows {WINDOWS}` on the held-out evaluation region, for every output alike"
         + (f"; dense perplexity {dense:.3f}." if dense else "."),
         "Time: wall seconds of the prune command alone (`--eval-windows 0`; for llm-compressor the script that loads "
         "the model, runs `oneshot` and saves), each a fresh process (bench/timing.py, start-up included, slmctl's "
         f"input hashing for the provenance record included). A slmctl run and llm-compressor's run of the same method "
         f"alternate over {ROUNDS} rounds (median [min-max] of the uncontended rounds); the other rows run once. "
         "Load average (1/5/15 min) before / after each run in the last column; the eval of every output is the "
         "same work, so a longer one flags a busy run.\n",
         "| run | ppl | KL mean | top-1 % | parameters | prune wall s | peak RSS MiB | eval s | note | load |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        r = res.get(name)
        if r is None:
            continue
        who = "llm-compressor" if name.startswith("llmc-") else "slmctl"
        label = name.removeprefix("llmc-")
        params = f"{r['params_after']:,}" if "params_after" in r else ""
        L.append(f"| {who} {label} | {r['ppl']:.3f} | {r['kld']:.4f} | {r['top1']:.1f} | {params} | "
                 f"{fmt(r['wall'], 0) if 'wall' in r else format(r['wall_s'], '.0f')} | {r['rss_mib']:.0f} | {r['eval_s']:.0f} | {r.get('note', '')} | {r['load_before']}"
                 + (f" / {r['load_after']}" if "load_after" in r else "") + " |")
    L.append("\nWhat the figures say (computed from the table):\n")

    def ppl(n):
        return res[n]["ppl"] if n in res else None
    if ppl("magnitude-50"):
        for m in ("wanda-50", "sparsegpt-50"):
            if ppl(m):
                L.append(f"- {m} vs magnitude-50: perplexity {ppl(m):.2f} vs {ppl('magnitude-50'):.2f} "
                         f"({ppl('magnitude-50') / ppl(m):.1f}x lower)")
    for m in ("wanda", "sparsegpt"):
        if ppl(f"{m}-50") and ppl(f"{m}-2:4"):
            L.append(f"- {m} 2:4 vs 50% unstructured: {ppl(f'{m}-2:4'):.2f} vs {ppl(f'{m}-50'):.2f}")
    for m in ("wanda-50", "sparsegpt-50", "wanda-2:4", "sparsegpt-2:4"):
        a, b = res.get(m), res.get(f"llmc-{m}")
        if a and b:
            d = (a["ppl"] / b["ppl"] - 1) * 100
            verdict = "within 2% or better" if d <= 2.0 else "MISSED the 2% target"
            L.append(f"- {m}: slmctl / llm-compressor perplexity {a['ppl']:.3f} / {b['ppl']:.3f} ({d:+.2f}%, {verdict}); "
                     f"time {a['wall_s']:.0f} s / {b['wall_s']:.0f} s (ratio {fmt_ratio(a.get('time_ratio'))}, "
                     f"peak RSS ratio {fmt_ratio(a.get('rss_ratio'))})")
    if ppl("depth-bi-25%") and ppl("depth-last-25%"):
        L.append(f"- depth 25%: Block Influence {ppl('depth-bi-25%'):.2f} vs last layers {ppl('depth-last-25%'):.4g}"
                 + (f", angular block {ppl('depth-angular-25%'):.2f}" if ppl("depth-angular-25%") else ""))
    w = res.get("width-25%")
    if w and "roles_after" in w:
        b, a = w["roles_before"], w["roles_after"]
        L.append(f"- width 25%: attention projections {b['attn']:,} -> {a['attn']:,} ({1 - a['attn'] / b['attn']:.1%} "
                 f"fewer), MLP {b['mlp']:,} -> {a['mlp']:,} ({1 - a['mlp'] / b['mlp']:.1%} fewer), together "
                 f"{1 - (a['attn'] + a['mlp']) / (b['attn'] + b['mlp']):.1%} fewer; whole model {b['all']:,} -> "
                 f"{a['all']:,}. Perplexity {w['ppl']:.2f} before any retraining (loads in transformers: the eval "
                 "above is transformers' from_pretrained)")
    g = res.get("width-25%-gguf")
    if g:
        L.append(f"- width 25% as GGUF (f32): llama.cpp perplexity {g['ppl']:.2f}, KL {g['kld']:.4f} vs the dense model "
                 f"(torch reference)" + (f"; transformers gave {w['ppl']:.2f}" if w else ""))
    missing = [n for n in ORDER if n not in res]
    if missing:
        L.append(f"\nNot in this table (not run with these settings, or failed): {', '.join(missing)}.")
    L.append("\nCommands (`$OUT` = " + (str(OUT).replace(str(ROOT) + "/", "")) + "; `$PEER_PY` = the llm-compressor "
             "environment's python; `bench/out/prune/peer.py` is the peer script, written by bench/bench_prune.py):\n")
    for name in ORDER:
        if name in res:
            cmd = res[name]["cmd"].replace(".venv/bin/python -m slmctl ", "slmctl ")
            L.append(f"- {name}: `{cmd}`")
    pair_timing = [{"runs": {n: res[n]["rounds"]}} for n in res if "rounds" in res[n]]
    if pair_timing:
        L.append("\n" + load_note(pair_timing))
    write_results("prune", {"settings": SETTINGS, "rounds": ROUNDS, "results": res}, "\n".join(L))


if __name__ == "__main__":
    sys.exit(main())
