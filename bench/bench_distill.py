"""slmctl distill on the sample: recovery of a width-pruned SmolLM2-135M (KD vs cross-entropy-only
fine-tuning at equal steps and data), and training throughput against a plain transformers loop.

Stages (BENCH_D_STAGES, comma list; default prune,kd,ce,throughput, in this order):
- prune:      the starting student, `slmctl prune --method width --heads-ratio 0.25 --mlp-ratio 0.25`
              (skipped when BENCH_D_STUDENT already exists);
- kd:         `slmctl distill` with forward KL on a top-k teacher cache, built afresh in this command
              (BENCH_D_KEEP_CACHE=1 reuses an existing one);
- ce:         the same command with `--kd-weight 0 --ce-weight 1` (plain fine-tuning, same blocks, same order);
- correct:    teacher correction (Minitron, https://arxiv.org/abs/2408.11796): the teacher fine-tuned with the
              ce command's settings on the same blocks (`-t TEACHER -s TEACHER --kd-weight 0 --ce-weight 1`);
- kdc:        the kd command with the corrected teacher (its own top-k cache entry);
- kdcce:      kdc plus `--ce-weight 1` (optional, not in the default list);
- ce2x:       the ce command with twice the steps, a control with the KD path's training compute (optional);
- throughput: training tokens/s of slmctl distill vs a textbook transformers loop (AdamW, clipping) on the
              same student, blocks, order, sequence length and batch, each in a fresh process; a slmctl row and
              the plain loop doing the same work alternate over BENCH_ROUNDS rounds (default 3).
Each stage saves its result in BENCH_D_OUT/<stage>.json with the run id; the fragment (distill.json,
distill.md) is built from the stages of this run only.

Settings via environment: BENCH_D_TEACHER (sample:smollm2-135m), BENCH_D_STUDENT (BENCH_D_OUT/width25),
BENCH_D_DATA (sample:shakespeare:calib), BENCH_D_STEPS (24), BENCH_D_SEQ (256), BENCH_D_BATCH (4),
BENCH_D_LR (3e-4), BENCH_D_TOPK (64), BENCH_D_FREEZE (1: --freeze-embeddings in kd and ce),
BENCH_D_WINDOWS (8), BENCH_D_CTX (256), BENCH_D_TP_STEPS (6), BENCH_D_THREADS (2),
BENCH_D_OUT (bench/out/distill), BENCH_D_LOCK (a lock file such as /tmp/slmctl-heavy.lock: each heavy
command runs holding it, and its timing starts once it is held; leave unset when the whole bench already
holds the lock).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from timing import alternate, heavy as _heavy, portable, ratio, results_dir, run_id, stats, timed, \
    write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
E = os.environ.get
OUT = Path(E("BENCH_D_OUT", str(ROOT / "bench" / "out" / "distill")))
TEACHER = E("BENCH_D_TEACHER", "sample:smollm2-135m")
STUDENT = E("BENCH_D_STUDENT", str(OUT / "width25"))
DATA = E("BENCH_D_DATA", "sample:shakespeare:calib")
STEPS = E("BENCH_D_STEPS", "24")
SEQ = E("BENCH_D_SEQ", "256")
BATCH = E("BENCH_D_BATCH", "4")
LR = E("BENCH_D_LR", "3e-4")
TOPK = E("BENCH_D_TOPK", "64")
FREEZE = E("BENCH_D_FREEZE", "1") == "1"
WINDOWS = E("BENCH_D_WINDOWS", "8")
CTX = E("BENCH_D_CTX", "256")
TP_STEPS = E("BENCH_D_TP_STEPS", "6")
THREADS = E("BENCH_D_THREADS", "2")
LOCK = E("BENCH_D_LOCK")
# `make bench` runs these (about 8 minutes on 2 cores); the teacher-correction stages (correct, kdc, kdcce, ce2x)
# and longer training (BENCH_D_STEPS=80) are a longer run, asked for by name
STAGES = E("BENCH_D_STAGES", "prune,kd,ce,throughput").split(",")
ROUNDS = int(E("BENCH_ROUNDS", "3"))
CORRECTED = OUT / "teacher-corrected"
ALL_STAGES = ("prune", "kd", "ce", "correct", "kdc", "kdcce", "ce2x", "throughput")
CACHE = OUT / "tcache"
SLMCTL = ["slmctl"]  # `make bench` puts the venv's bin first on PATH
os.environ.update(SLMCTL_THREADS=THREADS, OMP_NUM_THREADS=THREADS)  # the same threads for every process


def heavy():
    return _heavy(LOCK)


def run_timed(cmd: list[str]):
    with heavy():
        load = load_avg()
        r, wall, rss = timed(cmd, cwd=ROOT)
    return r, wall, rss, load


def load_avg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def short(text: str) -> str:
    return text.replace(str(OUT), "$OUT").replace(str(ROOT) + "/", "")


def show(cmd: list[str]) -> str:
    return portable(short(shlex.join(cmd)))


def run_cli(cmd: list[str]) -> dict:
    """Run a slmctl command with --json under GNU time: its report, wall time, peak RSS, load and stderr tail."""
    r, wall, rss, load = run_timed(cmd)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {shlex.join(cmd)}\n{r.stderr[-3000:]}")
    log = [ln for ln in r.stderr.splitlines() if not ln.strip().startswith(("Command being timed", "User time",
                                                                            "System time", "Percent", "Elapsed"))]
    log = [ln for ln in log if ln and not ln.startswith("\t")]
    return {"cmd": show(cmd), "report": json.loads(r.stdout), "wall_s": wall, "rss_mib": rss, "load_before": load,
            "log": log[-40:]}


def distill_cmd(out: Path, *extra: str, steps: str = STEPS, report: bool = True, freeze: bool = FREEZE,
                teacher: str = TEACHER, student: str = STUDENT) -> list[str]:
    cmd = [*SLMCTL, "distill", "-t", teacher, "-s", student, "--data", DATA, "--steps", steps, "--seq-len", SEQ,
           "--batch-size", BATCH, "--lr", LR, "--heldout", "8", "-o", str(out), "--force", "--json", *extra]
    if freeze:
        cmd.append("--freeze-embeddings")
    if report:
        cmd += ["--eval-ctx", CTX, "--eval-windows", WINDOWS]
    else:
        cmd.append("--no-report")
    return cmd


# ---------------------------------------------------------------- stages
def stage_prune() -> dict:
    cmd = [*SLMCTL, "prune", TEACHER, "--method", "width", "--heads-ratio", "0.25", "--mlp-ratio", "0.25",
           "--eval-ctx", CTX, "--eval-windows", WINDOWS, "-o", STUDENT, "--json"]
    if Path(STUDENT, "config.json").is_file():
        return {"cmd": show(cmd), "skipped": f"{STUDENT} exists"}
    return run_cli(cmd)


def stage_kd() -> dict:
    # a fresh cache, so the command's wall time includes the teacher's forward passes (BENCH_D_KEEP_CACHE=1 keeps it)
    if E("BENCH_D_KEEP_CACHE") != "1":
        shutil.rmtree(CACHE, ignore_errors=True)
    return run_cli(distill_cmd(OUT / "kd", "--teacher-cache", str(CACHE), "--topk", TOPK))


def stage_ce() -> dict:
    return run_cli(distill_cmd(OUT / "ce", "--kd-weight", "0", "--ce-weight", "1"))


def stage_correct() -> dict:
    # the teacher fine-tuned on the distillation blocks, with exactly the ce command's settings
    return run_cli(distill_cmd(CORRECTED, "--kd-weight", "0", "--ce-weight", "1", teacher=TEACHER, student=TEACHER))


def stage_kdc() -> dict:
    return run_cli(distill_cmd(OUT / "kdc", "--teacher-cache", str(CACHE), "--topk", TOPK, teacher=str(CORRECTED)))


def stage_kdcce() -> dict:
    return run_cli(distill_cmd(OUT / "kdcce", "--teacher-cache", str(CACHE), "--topk", TOPK, "--kd-weight", "1",
                               "--ce-weight", "1", teacher=str(CORRECTED)))


def stage_ce2x() -> dict:
    return run_cli(distill_cmd(OUT / "ce2x", "--kd-weight", "0", "--ce-weight", "1", steps=str(2 * int(STEPS))))


PLAIN = r'''
import json, sys, time, torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from slmctl import api
from slmctl.io.distill_data import load_blocks
from slmctl.pipelines.distill import Schedule
teacher, student, data, seq, batch, steps, lr, mode, threads = sys.argv[1:10]
seq, batch, steps, lr = int(seq), int(batch), int(steps), float(lr)
torch.set_num_threads(int(threads))
t_art, t_path = api.load_artifact(teacher)
tok = AutoTokenizer.from_pretrained(str(t_path))
train, _, _ = load_blocks(data, lambda t: tok(t, add_special_tokens=False)["input_ids"], seq, heldout=8)
plan = Schedule(train.shape[0], 0, batch, 1, 1)  # the same blocks in the same order as slmctl distill --seed 0
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).train()
if mode == "kd":
    t_model = AutoModelForCausalLM.from_pretrained(str(t_path), dtype=torch.float32).eval()
opt = torch.optim.AdamW(model.parameters(), lr=lr)
t0 = time.perf_counter()
for step in range(steps):
    x = train[plan.micro(step, 0, 0)]
    opt.zero_grad(set_to_none=True)
    if mode == "ce":
        loss = model(input_ids=x, labels=x, use_cache=False).loss
    else:  # textbook KD: teacher forward on the fly, forward KL over the full vocabulary
        with torch.no_grad():
            t_lp = F.log_softmax(t_model(input_ids=x, use_cache=False).logits.float(), -1)
        s_lp = F.log_softmax(model(input_ids=x, use_cache=False).logits.float(), -1)
        loss = F.kl_div(s_lp, t_lp, log_target=True, reduction="none").sum(-1).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
dt = time.perf_counter() - t0
print(json.dumps({"tokens_per_s": steps * batch * seq / dt, "train_seconds": dt, "final_loss": float(loss)}))
'''


def _tps(stdout: str) -> float:
    """Training tokens/s from a slmctl --json report or the plain loop's last line."""
    try:
        return json.loads(stdout)["tokens_per_s"]
    except json.JSONDecodeError:
        return json.loads(stdout.strip().splitlines()[-1])["tokens_per_s"]


def stage_throughput() -> dict:
    """Training tokens/s of slmctl distill against the plain loop doing the same work (the same loss, teacher
    computed the same way), alternating over ROUNDS rounds, each command a fresh process. The rows that read
    the teacher from the top-k cache do less work than any plain loop: they run once and get no ratio."""
    def plain(mode: str) -> list[str]:
        return [sys.executable, "-c", PLAIN, TEACHER, STUDENT, DATA, SEQ, BATCH, TP_STEPS, LR, mode, THREADS]

    def slm(name: str, *extra: str, freeze: bool = False) -> list[str]:
        return distill_cmd(OUT / "tp" / name, *extra, steps=TP_STEPS, report=False, freeze=freeze)

    groups = {  # label -> {row: command}; the first row of a group is the baseline of its ratio
        "CE": {"plain transformers loop, CE (labels=ids)": plain("ce"),
               "slmctl distill --kd-weight 0 --ce-weight 1": slm("ce", "--kd-weight", "0", "--ce-weight", "1")},
        "KD, teacher on the fly": {
            "plain transformers loop, KD (teacher on the fly, full-vocabulary forward KL)": plain("kd"),
            "slmctl distill (teacher on the fly)": slm("kd")},
        "KD, teacher from the cache (no plain loop does this work)": {
            "slmctl distill --teacher-cache (top-k)": slm("cache", "--teacher-cache", str(CACHE), "--topk", TOPK),
            "slmctl distill --teacher-cache --freeze-embeddings": slm("cachefreeze", "--teacher-cache", str(CACHE),
                                                                      "--topk", TOPK, freeze=True)}}
    out = {}
    for g, cmds in groups.items():
        same_work = not g.startswith("KD, teacher from the cache")
        with heavy():
            runs = alternate(cmds, rounds=ROUNDS if same_work else 1, cwd=ROOT)
        for r in runs.values():
            for m in r:
                m["tokens_per_s"] = _tps(m.pop("stdout"))
                m.pop("stderr", None)
        names = list(cmds)
        for n in names:
            st = stats(runs[n], "tokens_per_s")
            out[n] = {"group": g, "cmd": show(cmds[n]) if n.startswith("slmctl") else
                      f"python -c PLAIN (bench/bench_distill.py) {cmds[n][-2]}",
                      "tokens_per_s": st, "rounds": runs[n],
                      # tokens/s: higher is better; the ratio is slmctl's over the plain loop's
                      "ratio": ratio(runs[n], runs[names[0]], "tokens_per_s") if same_work and n != names[0] else None}
    return {"runs": out, "rounds": ROUNDS}


# ---------------------------------------------------------------- the fragment
def fmt(x, nd=3):
    return "—" if x is None else f"{x:.{nd}f}"


def n_params(folder: str) -> float:
    """Parameters of an HF folder, from the safetensors headers (tied weights are stored once)."""
    from safetensors import safe_open

    n = 0
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                shape = st.get_slice(k).get_shape()
                n += math.prod(shape)
    return n


def write(results: dict) -> None:
    L = ["## Distillation (slmctl distill)", "",
         f"Teacher `{TEACHER}`; student: the teacher width-pruned by `slmctl prune --method width --heads-ratio 0.25 "
         f"--mlp-ratio 0.25` ({n_params(STUDENT) / 1e6:.1f}M parameters). Training text: `{DATA}` (the comedies), packed to "
         f"{SEQ}-token blocks; the last 8 blocks are held out. Evaluation: {WINDOWS} windows of {CTX} tokens of the "
         f"sample's evaluation region (the tragedies, never trained on), the same windows for every model. "
         f"fp32, torch threads: {THREADS}, on the 2-core box; every command ran alone under the heavy-job lock "
         "(the 1/5/15-minute load averages just before each command are in the tables; they include the "
         "lock's previous holder). The KD command starts from an empty teacher cache, so its wall time includes "
         "the teacher's forward passes. Reproduce: `make bench`, or one stage at a time: "
         "`BENCH_D_LOCK=/tmp/slmctl-heavy.lock BENCH_D_STAGES=kd .venv/bin/python bench/bench_distill.py` "
         f"(student: `BENCH_D_STUDENT`, here `{short(STUDENT)}`); `$OUT` = `bench/out/distill`.", ""]
    p = results.get("prune")
    if p:
        L += ["```sh", p["cmd"], "```", ""]
        if "report" in p:
            q = p["report"]["quality"]
            L += [f"Pruning: perplexity {q['ppl_before']:.3f} → {q['ppl_after']:.3f} ({p['wall_s']:.0f} s).", ""]
    rows = [(k, results[k]) for k in ("kd", "ce", "correct", "kdc", "kdcce", "ce2x") if results.get(k)]
    base = next((r for k, r in rows if k != "correct"), None)
    if base:
        labels = {"kd": "KD: forward KL, top-k cache",
                  "ce": "CE only (`--kd-weight 0 --ce-weight 1`)",
                  "kdc": "KD from the corrected teacher (forward KL, top-k cache)",
                  "kdcce": "KD + CE from the corrected teacher (`--kd-weight 1 --ce-weight 1`)",
                  "ce2x": f"control: CE only, {2 * int(STEPS)} steps (twice the data)"}
        ev = base["report"]["eval"]
        t_ppl, s_ppl = ev["teacher"]["ppl"], ev["start"]["ppl"]

        def gap(p):  # share of the start -> teacher perplexity gap closed, always against the original teacher
            return 100.0 * (s_ppl - p) / (s_ppl - t_ppl)

        L += ["### Recovery: KD vs cross-entropy fine-tuning, equal steps and data", "", "```sh"]
        L += [r["cmd"] for _, r in rows]
        L += ["```", "",
              f"| {STEPS} steps × {BATCH} × {SEQ} tokens | ppl (tragedies) | gap recovered | KL to its teacher | "
              "top-1 agreement with its teacher | wall (whole command) | training tokens/s | load before |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |",
              f"| teacher | {t_ppl:.3f} | | | | | | |"]
        if results.get("correct"):
            c = results["correct"]
            L.append(f"| teacher corrected: CE fine-tuning on the same blocks (`-s` = the teacher) | "
                     f"{c['report']['eval']['distilled']['ppl']:.3f} | | {c['report']['eval']['distilled']['kld']:.4f} "
                     f"(to the original) | | {c['wall_s']:.0f} s | {c['report']['tokens_per_s']:.0f} | {c['load_before']} |")
        L.append(f"| pruned student (start) | {s_ppl:.3f} | 0 % | {ev['start']['kld']:.4f} | "
                 f"{ev['start']['top1_agreement_pct']:.2f} % | | | |")
        for k, r in rows:
            if k == "correct":
                continue
            e, rep = r["report"]["eval"], r["report"]
            L.append(f"| {labels[k]} | {e['distilled']['ppl']:.3f} | {gap(e['distilled']['ppl']):.1f} % | "
                     f"{e['distilled']['kld']:.4f} | {e['distilled']['top1_agreement_pct']:.2f} % | "
                     f"{r['wall_s']:.0f} s | {rep['tokens_per_s']:.0f} | {r['load_before']} |")
        L += ["", "The KL and top-1 columns compare each model with the teacher it learnt from (the corrected one "
              "for the rows that say so); the gap is always the one to the original teacher.", ""]
        for k, r in rows:
            h, hist = r["report"]["heldout"], r["report"]["history"]
            first = sum(x["loss"] for x in hist[:5]) / min(5, len(hist))
            last = sum(x["loss"] for x in hist[-5:]) / min(5, len(hist))
            cache = [ln for ln in r["log"] if ln.startswith("teacher cache")]
            L.append(f"- {k}: training loss {first:.3f} (first 5 steps) → {last:.3f} (last 5); held-out "
                     f"calibration blocks: KL {h['before']['kl']:.4f} → {h['after']['kl']:.4f}, ppl "
                     f"{h['before']['ppl']:.2f} → {h['after']['ppl']:.2f}; {r['report']['train_seconds']:.0f} s "
                     f"in the training loop" + (f"; {short(cache[0])}" if cache else "") + ".")
        ppl = {k: r["report"]["eval"]["distilled"]["ppl"] for k, r in rows}
        if "ce" in ppl and ("kd" in ppl or "kdc" in ppl):
            L += ["", "Targets:"]
            if "kd" in ppl:
                g = gap(ppl["kd"])
                L.append(f"- KD recovers {g:.1f} % of the gap (target ≥ 50 %: {'met' if g >= 50 else 'missed'}).")
            for k in ("kd", "kdc", "kdcce"):
                if k in ppl:
                    verdict = "beats" if ppl[k] < ppl["ce"] else "does not beat"
                    L.append(f"- {labels[k]} {verdict} CE-only at equal steps and data on held-out perplexity "
                             f"({ppl[k]:.3f} vs {ppl['ce']:.3f}).")
            if "ce2x" in ppl and "kdc" in ppl:
                verdict = "still beats" if ppl["kdc"] < ppl["ce2x"] else "does not beat"
                L.append(f"- KD from the corrected teacher {verdict} CE-only given twice the steps and data "
                         f"({ppl['kdc']:.3f} vs {ppl['ce2x']:.3f}).")
            L.append("- Each command's wall time includes loading, the teacher cache (KD) and the final report "
                     "(limit 20 min).")
        L.append("")
    tp = results.get("throughput")
    if tp:
        runs = tp["runs"]
        L += ["### Training throughput vs a plain transformers loop", "",
              f"{TP_STEPS} steps of {BATCH} × {SEQ} tokens each, same student, blocks and order, AdamW and norm "
              "clipping; tokens/s over the training loop only (no loading, no evaluation). Each command a fresh "
              f"process; a slmctl row and the plain loop doing the same work (the same loss, the teacher computed "
              f"the same way) alternate over {tp['rounds']} rounds: median [min-max] of the uncontended rounds. The "
              "rows that read the teacher's top-k logits from the cache (built by the kd stage) do less work than "
              "either plain loop: they run once and are not compared. The plain loop is in "
              "`bench/bench_distill.py` (`PLAIN`).", "",
              "| loop | tokens/s | slmctl / plain loop, same work | rounds |",
              "| --- | --- | --- | --- |"]
        for n, r in runs.items():
            st = r["tokens_per_s"]
            rr = "—" if r["ratio"] is None and not n.startswith("slmctl") else \
                "not compared (less work)" if "teacher-cache" in n else \
                "not reported (contended)" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            L.append(f"| {n} | {st['median']:.0f} [{st['min']:.0f}-{st['max']:.0f}]"
                     f"{' (contended)' if st['contended'] else ''} | {rr} | {st['n']} |")
        L += ["", "```sh"] + [r["cmd"] for n, r in runs.items() if n.startswith("slmctl")] + ["```", ""]
    write_results("distill", {"run_id_of_stages": {k: v.get("run_id") for k, v in results.items()},
                              "stages": results}, "\n".join(L).rstrip() + "\n")


def saved() -> dict:
    """Every stage's last saved result (another stage may have finished in another process meanwhile)."""
    results = {}
    for name in ALL_STAGES:
        f = OUT / f"{name}.json"
        if f.is_file():
            r = json.loads(f.read_text())
            if r.get("run_id") == run_id():  # stages of this run only, never a mix of code versions
                results[name] = r
    return results


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in STAGES:
        fn = {"prune": stage_prune, "kd": stage_kd, "ce": stage_ce, "correct": stage_correct, "kdc": stage_kdc,
              "kdcce": stage_kdcce, "ce2x": stage_ce2x, "throughput": stage_throughput}[name]
        print(f"bench distill: {name}", file=sys.stderr, flush=True)
        t = time.time()
        res = fn()
        res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        res["run_id"] = run_id()
        (OUT / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
        print(f"bench distill: {name} done in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        write(saved())
    write(saved())
    print((results_dir() / "distill.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
