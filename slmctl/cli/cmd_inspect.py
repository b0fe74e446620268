from __future__ import annotations

from typing import Annotated

import typer

from .options import ModelArg, Run, verb_options


@verb_options("json", "allow_pickle", "quiet")
def inspect(
    model: ModelArg,
    verify: Annotated[bool, typer.Option("--verify", help="Re-hash the recorded inputs that can be found; "
                                                          "exit 1 if any changed.")] = False,
    check: Annotated[bool, typer.Option("--check", help="Load the artifact in its own runtime (transformers, "
                                                        "GPTQModel, llama.cpp, onnxruntime), generate from a short prompt "
                                                        "and compare its logits with slmctl's reference; exit 1 if any "
                                                        "stage fails.")] = False,
    run: Run = Run(),
) -> int:
    """Show what a model artifact holds: format, architecture, parameters, dtypes, size, tokenizer, provenance."""
    import sys

    from .. import api

    out = run.output()
    info = api.inspect(model, allow_pickle=run.allow_pickle, verify=verify, check=check, log=out.log)
    out.result(info, human=render(info))
    if check and not info["check"]["ok"]:
        print(f"error: {info['path']} did not pass the check in {info['check']['runtime']}", file=sys.stderr)
        return 1
    if verify and not info["verify"]["ok"]:
        bad = [r for r in info["verify"]["inputs"] if r["status"] == "mismatch"]
        for r in bad:
            print(f"error: input of step '{r['verb']}' changed since it was recorded: {r['path']}", file=sys.stderr)
        print("hint: rebuild the artifact from the current inputs, or restore the original input", file=sys.stderr)
        return 1
    return 0


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _short(v, width: int = 60) -> str:
    text = str(v)
    return text if len(text) <= width else text[: width - 3] + "..."


def render(info: dict) -> str:
    rows = [
        ("path", info["path"]),
        ("format", info["format"]),
        ("architecture", info.get("architecture") or "?"),
        ("parameters", f"{info['parameters']:,} in {info['tensors']} tensors"),
        ("dtypes", ", ".join(f"{k} ({v:,})" for k, v in info["dtypes"].items()) or "-"),
        ("size on disk", _human_bytes(info["size_bytes"])),
    ]
    q = info.get("quantization")
    if q:
        rows.append(("quantization", q.get("file_type") or q.get("quant_method") or str(q) if isinstance(q, dict) else str(q)))
        if isinstance(q, dict) and q.get("tensor_counts"):  # a GGUF's type mixture: tensors per ggml type
            rows.append(("tensor types", ", ".join(f"{k} x{v}" for k, v in q["tensor_counts"].items())))
    if info.get("config"):
        rows.append(("shape", ", ".join(f"{k}={v}" for k, v in info["config"].items())))
    tok = info.get("tokenizer")
    rows.append(("tokenizer", ", ".join(f"{k}={v}" for k, v in tok.items()) if tok else "none"))
    width = max(len(r[0]) for r in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    steps = info.get("provenance") or []
    lines.append(f"{'provenance':<{width}}  " + (f"{len(steps)} step(s)" if steps else "none recorded"))
    for i, s in enumerate(steps, 1):
        recipe = ", ".join(f"{k}={_short(v)}" for k, v in (s.get("recipe") or {}).items() if v is not None)
        lines.append(f"  {i}. {s.get('verb')}  {recipe}")
        for inp in s.get("inputs", []):
            lines.append(f"       <- {inp.get('ref')}  sha256:{str(inp.get('sha256'))[:16]}")
    if info.get("check"):
        from ..eval.check import render as render_check

        lines.append("check")
        lines.extend("  " + ln for ln in render_check(info["check"]).splitlines())
    v = info.get("verify")
    if v:
        lines.append(f"{'verify':<{width}}  " + ("all inputs found match" if v["ok"] else "INPUTS CHANGED")
                     + f" ({v['checked']} checked, {len(v['inputs']) - v['checked']} not found)")
        for r in v["inputs"]:
            lines.append(f"  {r['status']:<8} {r['path']}")
    return "\n".join(lines)
