"""slmctl merge vs mergekit-yaml on the same configs: wall time and peak RSS, side by side.

Inputs: the SmolLM2-135M sample (HF folder, fp32) and perturbed copies of it. Each tool runs as its
own process on the same YAML; peak RSS is that process's own (wait4), wall time is end to end
(process start included, as a user sees it). Each pair runs ``REPEAT`` times, alternating, and the
best is kept. slmctl runs with an empty hash cache every time (SLMCTL_CACHE in a fresh folder), so
hashing its inputs for the provenance record is always paid. After the runs the two outputs are compared
tensor by tensor (max abs difference). Writes bench/results/merge.md. mergekit: MERGEKIT_YAML or
.peers/mergekit. Run it under the heavy-job lock: `flock /tmp/slmctl-heavy.lock python bench/bench_merge.py`.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import timing  # noqa: E402  (bench/ is on sys.path when run as a script)
from timing import PEERS, results_dir  # noqa: E402  (bench/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "merge"
RESULT = results_dir() / "merge.md"
MERGEKIT = Path(os.environ.get("MERGEKIT_YAML", str(PEERS / "mergekit/bin/mergekit-yaml")))
REPEAT = int(os.environ.get("BENCH_REPEAT", "2"))


def measure(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh process (timing.measure: its own peak, not this script's)."""
    m = timing.measure(cmd, env=env)
    if m["rc"] != 0:
        raise SystemExit(f"{cmd[0]} failed ({m['rc']}):\n{m['stderr'][-2000:]}")
    return m["wall_s"], m["peak_rss_mib"]


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
    slm = [str(Path(sys.executable).parent / "slmctl")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    rows = []
    loads = [os.getloadavg()[0]]
    for name, text in cases.items():
        cfg = OUT / (name.split()[0] + ".yml")
        cfg.write_text(text)
        best = {"slmctl": (1e9, 1e9), "mergekit": (1e9, 1e9)}
        for _ in range(REPEAT):
            for tool in ("slmctl", "mergekit"):
                dest = OUT / f"{tool}-{cfg.stem}"
                shutil.rmtree(dest, ignore_errors=True)
                cache = OUT / "slmctl-cache"  # empty each time: slmctl pays for hashing its inputs
                shutil.rmtree(cache, ignore_errors=True)
                env["SLMCTL_CACHE"] = str(cache)
                cmd = (slm + ["merge", "--config", str(cfg), "-o", str(dest), "-q"] if tool == "slmctl"
                       else [str(MERGEKIT), str(cfg), str(dest), "--quiet"])
                wall, rss = measure(cmd, env)
                print(f"{name} {tool}: {wall:.1f} s, {rss:.0f} MiB", file=sys.stderr, flush=True)
                best[tool] = (min(best[tool][0], wall), min(best[tool][1], rss))
                loads.append(os.getloadavg()[0])
        diff = max_abs_diff(OUT / f"slmctl-{cfg.stem}", OUT / f"mergekit-{cfg.stem}")
        print(f"{name}: max |slmctl - mergekit| = {diff:.3g}", file=sys.stderr, flush=True)
        rows.append((name, best["slmctl"], best["mergekit"], diff))
    import importlib.metadata as md

    mk_ver = subprocess.run([str(MERGEKIT.parent / "python"), "-c",
                             "import importlib.metadata as m; print(m.version('mergekit'))"],
                            capture_output=True, text=True).stdout.strip()
    lines = ["## merge: slmctl merge vs mergekit-yaml\n",
             f"SmolLM2-135M (fp32 HF folder) and copies perturbed by N(0, 0.002); the same YAML for both tools; "
             f"best of {REPEAT} runs, each tool its own process (start-up included). mergekit {mk_ver}, "
             f"slmctl {md.version('slmctl')}, torch {md.version('torch')}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs.\n",
             "| config | slmctl wall (s) | mergekit wall (s) | wall ratio | slmctl peak RSS (MiB) | "
             "mergekit peak RSS (MiB) | RSS ratio | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s, m, diff in rows:
        lines.append(f"| {name} | {s[0]:.1f} | {m[0]:.1f} | {s[0] / m[0]:.2f} | {s[1]:.0f} | {m[1]:.0f} | "
                     f"{s[1] / m[1]:.2f} | {diff:.2g} |")
    lines.append("\nRatios are slmctl / mergekit (below 1.0: slmctl is faster or smaller). *max abs diff*: the "
                 "largest difference between the two tools' output tensors (parity target 1e-6). slmctl ran "
                 "with an empty hash cache each time, so its wall time includes hashing the inputs for the "
                 f"provenance record. 1-minute load average during the runs: {min(loads):.1f} to "
                 f"{max(loads):.1f} (2 cores; run under the heavy-job lock).\n")
    lines.append("Command: `flock /tmp/slmctl-heavy.lock .venv/bin/python bench/bench_merge.py` "
                 f"(BENCH_REPEAT={REPEAT}).\n")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text("\n".join(lines))
    print(RESULT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
