"""slmctl merge vs mergekit-yaml on the same configs: wall time and peak RSS, side by side.

Inputs: the SmolLM2-135M sample (HF folder, fp32) and perturbed copies of it. Each tool runs as its
own fresh process (bench/timing.py: start-up included, peak RSS from wait4) on the same YAML, alternating
over BENCH_ROUNDS rounds (default 3, the first tool rotating); medians with the range, ratios from
uncontended rounds only. slmctl runs twice per round: with an empty hash cache (it hashes its inputs for
the provenance record: the figure compared) and with a warm one (hashing skipped). The outputs are
compared tensor by tensor (max abs difference). Writes merge.json and merge.md. mergekit: MERGEKIT_YAML
or .peers/mergekit (built by `make peers`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from timing import PEERS, ROOT, alternate, cells, compare, load_note, portable, ratio, \
    write_results  # noqa: E402  (bench/ is on sys.path when run as a script)

OUT = ROOT / "bench" / "out" / "merge"
MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", str(PEERS / "mergekit/bin/mergekit-yaml")))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def max_abs_diff(x: Path, y: Path) -> float:
    """Largest |a - b| over every tensor of two HF folders (they must hold the same names and shapes)."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    ix, iy = index(x), index(y)
    if sorted(ix) != sorted(iy):
        raise SystemExit(f"different tensors: {sorted(set(ix) ^ set(iy))[:5]}")
    worst = 0.0
    for k in ix:
        with safe_open(str(ix[k]), "pt") as hx, safe_open(str(iy[k]), "pt") as hy:
            a, b = hx.get_tensor(k), hy.get_tensor(k)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise SystemExit(f"{k}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        worst = max(worst, (a.double() - b.double()).abs().max().item())
    return worst


def perturbed(src: Path, dest: Path, seed: int, scale: float = 0.002) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    if (dest / "model.safetensors").is_file():
        return dest
    shutil.copytree(src, dest, dirs_exist_ok=True)
    sd = load_file(str(dest / "model.safetensors"))
    g = torch.Generator().manual_seed(seed)
    save_file({k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()},
              str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from slmctl.api import load_artifact

    if not MERGEKIT.is_file():
        print(f"mergekit-yaml not found at {MERGEKIT}; set MERGEKIT_YAML", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    _, sample = load_artifact("sample:smollm2-135m")
    a = OUT / "a"
    if not (a / "config.json").is_file():
        shutil.copytree(sample, a, dirs_exist_ok=True)
    b, c = perturbed(a, OUT / "b", 1), perturbed(a, OUT / "c", 2)
    cases = {
        "slerp (2 models)": f"merge_method: slerp\nbase_model: {a}\nmodels: [{{model: {a}}}, {{model: {b}}}]\n"
                            f"parameters: {{t: [0, 0.5, 1]}}\n",
        "ties (base + 2)": f"merge_method: ties\nbase_model: {a}\nmodels:\n"
                           f"  - {{model: {b}, parameters: {{weight: 1.0, density: 0.5}}}}\n"
                           f"  - {{model: {c}, parameters: {{weight: 0.5, density: 0.5}}}}\n",
    }
    slm = [sys.executable, "-m", "slmctl"]
    base = {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cold, warm = OUT / "cache-cold", OUT / "cache-warm"
    data = []
    for name, text in cases.items():
        cfg = OUT / (name.split()[0] + ".yml")
        cfg.write_text(text)
        dest = {k: OUT / f"{k}-{cfg.stem}" for k in ("slmctl", "slmctl-warm", "mergekit")}

        def before(tool: str) -> None:
            shutil.rmtree(dest[tool], ignore_errors=True)
            shutil.rmtree(cold, ignore_errors=True)  # slmctl pays for hashing its inputs every time

        envs = {"slmctl": {**base, "SLMCTL_CACHE": str(cold)}, "slmctl-warm": {**base, "SLMCTL_CACHE": str(warm)},
                "mergekit": base}
        cmds = {"slmctl": [*slm, "merge", "--config", str(cfg), "-o", str(dest["slmctl"]), "-q"],
                "mergekit": [str(MERGEKIT), str(cfg), str(dest["mergekit"]), "--quiet"],
                "slmctl-warm": [*slm, "merge", "--config", str(cfg), "-o", str(dest["slmctl-warm"]), "-q"]}
        # the warm hash cache is filled once before the rounds
        subprocess.run([*slm, "merge", "--config", str(cfg), "-o", str(OUT / "warm-fill"), "-q", "--force"],
                       env=dict(os.environ, **envs["slmctl-warm"]), capture_output=True, check=False)
        cmds = {k: ["env", *(f"{a}={b}" for a, b in envs[k].items()), *c] for k, c in cmds.items()}
        runs = alternate(cmds, rounds=ROUNDS, before=before)
        diff = max_abs_diff(dest["slmctl"], dest["mergekit"])
        entry = {"config": name, "yaml": portable(text), "max_abs_diff": diff, **compare(runs, "slmctl", "mergekit"),
                 "time_ratio_warm": ratio(runs["slmctl-warm"], runs["mergekit"])}
        data.append(entry)
        print(f"{name}: slmctl {entry['wall']['slmctl']['median']:.1f} s, mergekit "
              f"{entry['wall']['mergekit']['median']:.1f} s, max |slmctl - mergekit| = {diff:.3g}",
              file=sys.stderr, flush=True)
    mk_ver = subprocess.run([str(MERGEKIT.parent / "python"), "-c",
                             "import importlib.metadata as m; print(m.version('mergekit'))"],
                            capture_output=True, text=True).stdout.strip()
    md = render(data, mk_ver)
    write_results("merge", {"rounds": ROUNDS, "mergekit": mk_ver, "results": data}, md)
    print(md)
    return 0


def render(data: list[dict], mk_ver: str) -> str:
    L = ["## merge: slmctl merge vs mergekit-yaml", "",
         f"SmolLM2-135M (fp32 HF folder) and copies perturbed by N(0, 0.002); the same YAML for both tools (mergekit "
         f"{mk_ver}). Each command a fresh process, start-up included; {ROUNDS} alternating rounds, median "
         "[min-max] of the uncontended rounds. `slmctl` hashes its inputs each time (empty hash cache: the figure "
         "compared); `slmctl, warm` has them cached (provenance hashing skipped). Ratio: slmctl / mergekit.", "",
         "| config | slmctl s | slmctl, warm s | mergekit s | time ratio (warm) | slmctl MiB | mergekit MiB | "
         "RSS ratio | max abs diff |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in data:
        L.append(f"| {e['config']} | {cells(e, 'mergekit')} | {e['max_abs_diff']:.2g} |")
    L += ["", "*max abs diff*: the largest difference between the two tools' output tensors (parity target 1e-6).",
          load_note(data)]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
