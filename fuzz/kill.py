"""SIGKILL slmctl's writing commands at random moments and check that nothing is lost or left half-done.

    python fuzz/kill.py --trials 60            # the long run (make fuzz)

For every trial: start a command (export to an HF folder, export to one .safetensors file, and
quantize/merge when this slmctl offers them), kill it with SIGKILL at a random moment — at a random
time, or just after its temporary output appears, or just after the output is renamed into place —
then check:

* the output is absent, or complete and valid (byte-identical to an uninterrupted run's);
* the input is byte-identical;
* re-running succeeds, and afterwards no temporary file remains beside the output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TMP_MARK = ".slmctl-tmp-"

# name -> (argv template, output is a folder); {src} and {out} are filled in. A verb this slmctl does
# not offer is skipped; one whose arguments differ is reported and skipped (see calibrate()).
COMMANDS: dict[str, tuple[list[str], bool]] = {
    "export-hf": (["export", "{src}", "--format", "hf", "-o", "{out}"], True),
    "export-safetensors": (["export", "{src}", "--format", "safetensors", "-o", "{out}"], False),
    "quantize": (["quantize", "{src}", "-m", "rtn", "-b", "4", "-g", "32", "--no-report", "-o", "{out}"], True),
    "merge": (["merge", "{src}", "{src2}", "--method", "linear", "-o", "{out}"], True),
}


def slmctl(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmctl", *args], capture_output=True, text=True, env=env, **kw)


def offered_verbs() -> set[str]:
    r = slmctl("--help", timeout=120)
    verbs = set()
    on = False
    for line in r.stdout.splitlines():
        if line.strip().startswith("Commands:"):
            on = True
            continue
        if on and line.startswith("  ") and line.split():
            verbs.add(line.split()[0])
    return verbs


def tree_digest(path: Path, skip_sidecars: bool = False) -> str:
    """A hash of every file under ``path`` (names and bytes); slmctl.json sidecars hold a timestamp."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if skip_sidecars and (p.name == "slmctl.json" or p.name.endswith(".slmctl.json")):
            continue
        h.update(str(p.relative_to(path.parent if path.is_file() else path)).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def temps_beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if TMP_MARK in p.name) if out.parent.exists() else []


@dataclass
class Command:
    name: str
    argv: list[str]
    is_dir: bool
    reference: str  # digest of an uninterrupted run's output
    duration: float

    def args(self, src: Path, out: Path) -> list[str]:
        return [a.format(src=src, out=out, src2=src.parent / (src.name + "-b")) for a in self.argv]


def calibrate(src: Path, work: Path, env: dict, log, only: list[str] | None = None) -> list[Command]:
    """Run each command once, uninterrupted: its duration and the digest of a correct output."""
    verbs = offered_verbs()
    cmds = []
    for name, (argv, is_dir) in COMMANDS.items():
        if only and name not in only:
            continue
        if argv[0] not in verbs:
            log(f"{name}: `slmctl {argv[0]}` is not offered by this slmctl; skipped")
            continue
        out = work / f"ref-{name}" / ("out" if is_dir else "out.safetensors")
        out.parent.mkdir(parents=True)
        c = Command(name, argv, is_dir, "", 0.0)
        t0 = time.perf_counter()
        r = slmctl(*c.args(src, out), env=env, timeout=600)
        c.duration = time.perf_counter() - t0
        if r.returncode != 0:
            log(f"{name}: uninterrupted run failed (exit {r.returncode}): {r.stderr.strip()[-300:]}; skipped")
            continue
        c.reference = tree_digest(out, skip_sidecars=True)
        cmds.append(c)
        log(f"{name}: {c.duration:.1f} s uninterrupted")
    return cmds


def trial(c: Command, src: Path, work: Path, env: dict, rng: random.Random) -> dict:
    """One kill trial; returns its record (``ok`` False with ``why`` when a promise was broken)."""
    parent = work / f"t{rng.getrandbits(32):08x}"
    parent.mkdir()
    out = parent / ("out" if c.is_dir else "out.safetensors")
    src_before = tree_digest(src)
    mode = rng.choice(["time", "temp", "temp", "commit"])
    # a third of the trials replace an existing complete output with --force (kill mid-swap)
    force = rng.random() < 1 / 3
    if force:
        ref = work / f"ref-{c.name}" / out.name
        if ref.is_dir():
            shutil.copytree(ref, out)
        else:
            shutil.copyfile(ref, out)
    proc = subprocess.Popen([sys.executable, "-m", "slmctl", *c.args(src, out), *(["--force"] if force else [])],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    deadline = t0 + c.duration * 3 + 30
    if mode == "time":
        at = rng.uniform(0, c.duration * 1.1)
        while proc.poll() is None and time.perf_counter() - t0 < at:
            time.sleep(0.005)
    else:  # wait for the temporary (or the final) output to appear, then a little more
        while proc.poll() is None and time.perf_counter() < deadline:
            temps = temps_beside(out)
            if (mode == "temp" and temps) or (mode == "commit" and out.exists() and not force) \
                    or (mode == "commit" and force and any("-old-" in t for t in temps)):  # mid-swap
                break
            time.sleep(0.002)
        if proc.poll() is None and mode != "time":
            time.sleep(rng.uniform(0, 0.3) if mode == "temp" else rng.uniform(0, 0.02))
    killed_at = time.perf_counter() - t0
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    rec = {"command": c.name, "mode": mode, "force": force, "killed_at_s": round(killed_at, 3), "finished_first": finished,
           "output_after_kill": "absent", "ok": True, "why": ""}

    def fail(why: str) -> dict:
        rec["ok"], rec["why"] = False, why
        return rec

    if tree_digest(src) != src_before:
        return fail("the input changed")
    if out.exists() or out.is_symlink():
        rec["output_after_kill"] = "complete"
        if tree_digest(out, skip_sidecars=True) != c.reference:
            return fail("the output exists but differs from an uninterrupted run's (partial or corrupt)")
    rec["temps_after_kill"] = len(temps_beside(out))
    # re-running succeeds (with --force when a complete output is there) and cleans up
    again = slmctl(*c.args(src, out), *(["--force"] if out.exists() else []), env=env, timeout=600)
    if again.returncode != 0:
        return fail(f"re-running failed (exit {again.returncode}): {again.stderr.strip()[-300:]}")
    if tree_digest(out, skip_sidecars=True) != c.reference:
        return fail("the re-run's output differs from an uninterrupted run's")
    left = temps_beside(out)
    if left:
        return fail(f"temporary files remain after the re-run: {left}")
    if tree_digest(src) != src_before:
        return fail("the input changed during the re-run")
    shutil.rmtree(parent)
    return rec


def build_source(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import build_tiny  # the same tiny Llama the tests use

    build_tiny("llama", folder.parent / (folder.name + "-b"), seed=1)  # the second model for merge
    return build_tiny("llama", folder)


def run(trials: int, seed: int, work: Path, src: Path | None = None, log=print, only: list[str] | None = None) -> dict:
    env = dict(os.environ, SLMCTL_CACHE=str(work / "cache"), TOKENIZERS_PARALLELISM="false")
    if src is None:
        src = build_source(work / "src")
    cmds = calibrate(src, work, env, log, only)
    if not cmds:
        raise SystemExit("no command to interrupt")
    rng = random.Random(seed)
    records = []
    for k in range(trials):
        c = cmds[k % len(cmds)]
        rec = trial(c, src, work, env, rng)
        records.append(rec)
        log(f"trial {k + 1}/{trials} {c.name:<20} {rec['mode']:<6} killed at {rec['killed_at_s']:6.2f} s: "
            f"output {rec['output_after_kill']:<8} {'ok' if rec['ok'] else 'FAILED: ' + rec['why']}")
    by_cmd: dict[str, dict] = {}
    for r in records:
        d = by_cmd.setdefault(r["command"], {"trials": 0, "survived": 0, "output_absent": 0, "output_complete": 0,
                                             "finished_before_kill": 0})
        d["trials"] += 1
        d["survived"] += r["ok"]
        d["output_absent"] += r["output_after_kill"] == "absent"
        d["output_complete"] += r["output_after_kill"] == "complete"
        d["finished_before_kill"] += r["finished_first"]
    return {"seed": seed, "trials": len(records), "survived": sum(r["ok"] for r in records),
            "commands": by_cmd, "skipped": sorted(set(COMMANDS) - {c.name for c in cmds}),
            "failures": [r for r in records if not r["ok"]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--commands", default=None, help="comma-separated subset of: " + ", ".join(COMMANDS))
    a = ap.parse_args()
    work = a.out or Path(tempfile.mkdtemp(prefix="slmctl-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    doc = run(a.trials, a.seed, work, log=lambda m: print(m, file=sys.stderr),
              only=a.commands.split(",") if a.commands else None)
    print(json.dumps(doc, indent=2) if a.json else
          f"{doc['survived']}/{doc['trials']} kill trials survived; per command: {json.dumps(doc['commands'])}; "
          f"skipped: {doc['skipped']}")
    return 0 if doc["survived"] == doc["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
