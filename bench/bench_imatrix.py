"""The importance matrix: slmctl's layer-by-layer pass vs llama.cpp's own llama-imatrix, side by side (issue 20).

Both compute, for every linear weight of the decoder layers, the mean squared activation of each input
channel over the same calibration tokens: BENCH_IM_CHUNKS windows of BENCH_IM_CTX tokens (64 x 512 by
default, the issue's configuration) drawn by slmctl (seed 0) from the calibration region of
`sample:shakespeare`. slmctl reads the sample's fp32 HF folder; llama-imatrix (built from the
llama-cpp-python source package by bench/llama_tools.py, GGML_NATIVE) reads slmctl's f16 GGUF of the
same model (its usual input) and, as a same-precision control, the f32 GGUF; it gets the windows'
text (decoded, one window a line) and re-tokenises it into the same number of chunks, with as many
threads as this machine has cores (torch's default on slmctl's side). Each command is a fresh process,
start-up included, BENCH_ROUNDS alternating rounds (medians and range, load recorded).
The matrices are compared tensor by tensor (Pearson correlation of the per-channel values), so the two
sides are shown to compute the same thing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import CORES, ROOT, alternate, compare as compare_runs, fmt, fmt_ratio, load_note, write_results  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CHUNKS = int(os.environ.get("BENCH_IM_CHUNKS", "64"))
CTX = int(os.environ.get("BENCH_IM_CTX", "512"))
MODEL = "sample:smollm2-135m"
DATA = os.environ.get("BENCH_IM_DATA", "sample:shakespeare")
PY = sys.executable

# slmctl's importance matrix over the windows it draws, written in llama.cpp's GGUF imatrix format
# (the same script bench_gguf_quant.py times for its imatrix rows)
from bench_gguf_quant import IMATRIX  # noqa: E402

# the calibration windows as text, one window a line, for llama-imatrix
WINDOWS_TEXT = r'''
import sys
from slmctl.api import load_artifact
from slmctl.eval.backends import load_tokenizer
from slmctl.pipelines.quantize import calibration_windows
art, _ = load_artifact(sys.argv[1])
tok = load_tokenizer(art)
wins, _ = calibration_windows(tok, data=sys.argv[3], field="text", samples=int(sys.argv[4]),
                              seq_len=int(sys.argv[5]), seed=0)
text = "\n".join(tok.decode(w) for w in wins)
open(sys.argv[2], "w").write(text + "\n")
print(len(wins), len(tok(text, add_special_tokens=False)["input_ids"]))
'''


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """Per-tensor Pearson correlation of the two matrices' per-channel values over the tensors both hold."""
    common = sorted(set(a) & set(b))
    cors = [float(np.corrcoef(a[n].astype(np.float64), b[n].astype(np.float64))[0, 1]) for n in common
            if a[n].shape == b[n].shape and a[n].std() > 0 and b[n].std() > 0]
    return {"tensors": [len(common), len(a), len(b)],
            "pearson_median": float(np.median(cors)) if cors else None,
            "pearson_min": float(np.min(cors)) if cors else None}


def main() -> int:
    from llama_tools import tool

    from slmctl.io.imatrix import read_imatrix

    exe = tool("llama-imatrix")
    out = Path(os.environ.get("BENCH_IM_OUT", tempfile.mkdtemp(prefix="bench-imatrix-")))
    out.mkdir(parents=True, exist_ok=True)
    ggufs = {}
    for t in ("f16", "f32"):
        ggufs[t] = out / f"sample-{t}.gguf"
        subprocess.run([PY, "-m", "slmctl", "export", MODEL, "--format", "gguf", "--outtype", t, "-o", str(ggufs[t]),
                        "--force", "--quiet"], check=True, cwd=ROOT)
    text = out / "windows.txt"
    r = subprocess.run([PY, "-c", WINDOWS_TEXT, MODEL, str(text), DATA, str(CHUNKS), str(CTX)], check=True, cwd=ROOT,
                       capture_output=True, text=True)
    n_windows, n_tokens = map(int, r.stdout.split())
    if n_windows < CHUNKS:
        raise RuntimeError(f"only {n_windows} windows of {CTX} tokens in {DATA}'s calibration region")
    outs = {"slmctl": out / "slmctl.imatrix.gguf", "llama-imatrix f16": out / "llama-f16.imatrix.gguf",
            "llama-imatrix f32": out / "llama-f32.imatrix.gguf"}
    llama = [str(exe), "-f", str(text), "-c", str(CTX), "-b", str(CTX), "--chunks", str(CHUNKS), "-t", str(CORES),
             "--no-ppl", "-ngl", "0"]
    cmds = {"slmctl": [PY, "-c", IMATRIX, MODEL, str(outs["slmctl"]), DATA, str(CHUNKS), str(CTX)],
            "llama-imatrix f16": [*llama, "-m", str(ggufs["f16"]), "-o", str(outs["llama-imatrix f16"])],
            "llama-imatrix f32": [*llama, "-m", str(ggufs["f32"]), "-o", str(outs["llama-imatrix f32"])]}

    def before(name: str) -> None:
        outs[name].unlink(missing_ok=True)

    runs = alternate(cmds, rounds=ROUNDS, before=before, cwd=ROOT)
    for peer in ("llama-imatrix f16", "llama-imatrix f32"):  # the same amount of work: as many chunks as slmctl's windows
        for m in runs[peer]:
            got = re.search(r"computing over (\d+) chunks", m["stderr"])
            if got is None or int(got.group(1)) != CHUNKS:
                raise RuntimeError(f"{peer} did not run {CHUNKS} chunks: {got.group(0) if got else m['stderr'][-500:]}")
    mats = {k: read_imatrix(p) for k, p in outs.items()}
    entries = {}
    for peer in ("llama-imatrix f16", "llama-imatrix f32"):
        entries[peer] = {**compare_runs({"slmctl": runs["slmctl"], peer: runs[peer]}, "slmctl", peer),
                         "agreement": agreement(mats["slmctl"], mats[peer])}
    md = render(entries, exe, n_tokens)
    write_results("imatrix", {"rounds": ROUNDS, "chunks": CHUNKS, "ctx": CTX, "data": DATA, "threads": CORES,
                              "text_tokens": n_tokens, "results": entries}, md, packages=("llama-cpp-python",))
    print(md)
    return 0


def render(entries: dict, exe: Path, n_tokens: int) -> str:
    from importlib import metadata

    ver = metadata.version("llama-cpp-python")
    L = ["## imatrix: the importance matrix vs llama.cpp's llama-imatrix (issue 20)", "",
         f"{CHUNKS} windows of {CTX} tokens drawn (seed 0) from the calibration region of `{DATA}`; slmctl runs the "
         f"`{MODEL}` fp32 folder layer by layer (`bench_gguf_quant.IMATRIX`, what `--method imatrix|gptq` computes); "
         f"`llama-imatrix` (llama.cpp from llama-cpp-python {ver}'s source package, built by `bench/llama_tools.py`, "
         f"GGML_NATIVE) runs slmctl's f16 GGUF of the same model, and its f32 GGUF as a same-precision control, "
         f"on the same windows' text ({n_tokens} tokens re-tokenised; `-c {CTX} -b {CTX} --chunks {CHUNKS} "
         f"-t {CORES} --no-ppl`). Fresh processes, start-up included, {ROUNDS} alternating rounds, median "
         "[min-max]. Agreement: Pearson correlation of the per-channel mean squared activations, per tensor "
         "(median, minimum), over the tensors both matrices hold.", "",
         "| peer | slmctl s | peer s | time ratio | slmctl MiB | peer MiB | RSS ratio | tensors (both/slmctl/peer) "
         "| correlation median (min) |",
         "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for peer, e in entries.items():
        w, r, a = e["wall"], e["rss"], e["agreement"]
        cor = "-" if a["pearson_median"] is None else f"{a['pearson_median']:.4f} ({a['pearson_min']:.4f})"
        L.append(f"| {peer} | {fmt(w['slmctl'])} | {fmt(w[peer])} | {fmt_ratio(e['time_ratio'])} | "
                 f"{r['slmctl']['median']:.0f} | {r[peer]['median']:.0f} | {fmt_ratio(e['rss_ratio'])} | "
                 f"{'/'.join(map(str, a['tensors']))} | {cor} |")
    L += ["", "Target (issue 20): the importance matrix in at most llama.cpp's time (llama-imatrix on the f16 GGUF)."]
    t = entries["llama-imatrix f16"]["time_ratio"]
    L.append(f"- slmctl vs llama-imatrix f16: {fmt_ratio(t)}: "
             + ("not judged (contended)" if t is None else "met" if t <= 1.0 else "NOT met"))
    L += ["", load_note(list(entries.values()))]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
