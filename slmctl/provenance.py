"""What was done: recipe, input hashes and versions, written into every artifact.

The record kept inside the artifact has no timestamp, so the same recipe on the same inputs gives
byte-identical outputs; slmctl.json beside it adds the creation time.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from . import __version__

LIBS = ("torch", "transformers", "safetensors", "tokenizers", "gguf", "onnx", "onnxruntime", "llama_cpp_python", "numpy")


def versions() -> dict[str, str]:
    out = {"slmctl": __version__, "python": platform.python_version()}
    for lib in LIBS:
        try:
            out[lib] = metadata.version(lib.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def input_record(ref: str, path: Path, artifact=None) -> dict[str, Any]:
    from .io.hashing import artifact_sha256

    return _record(ref, path, artifact, artifact_sha256(path))


def _record(ref: str, path: Path, artifact, sha256: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"ref": ref, "path": str(path), "sha256": sha256}
    if artifact is not None:
        rec["format"] = artifact.format
        parent = artifact.provenance()
        if parent:
            rec["provenance"] = parent
    return rec


PENDING = "pending-sha256-"  # a placeholder's prefix: not hex, so no reader takes it for a digest


def input_record_later(ref: str, path: Path, artifact=None) -> tuple[dict[str, Any], Callable[[], tuple[str, str]]]:
    """``input_record`` with the input's hash computed on a background thread while the caller converts
    (file reads and hashlib release the GIL): (record, finish). Until ``finish()`` the record's sha256 is a
    placeholder exactly as long as a digest (64 characters, unique), so a writer can put the record in a
    header now and overwrite the placeholder in place later; ``finish()`` waits for the hash, puts it in
    the record and returns (placeholder, digest). An error while hashing is raised by ``finish()``."""
    import secrets
    import threading

    from .io.hashing import artifact_sha256

    placeholder = PENDING + secrets.token_hex(25)[: 64 - len(PENDING)]
    rec = _record(ref, path, artifact, placeholder)
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["digest"] = artifact_sha256(path)
        except BaseException as exc:  # noqa: BLE001  (handed to finish())
            box["error"] = exc

    worker = threading.Thread(target=run, name="slmctl-hash", daemon=True)
    worker.start()

    def finish() -> tuple[str, str]:
        worker.join()
        if "error" in box:
            raise box["error"]
        rec["sha256"] = box["digest"]
        return placeholder, box["digest"]

    return rec, finish


_ASKED: contextvars.ContextVar = contextvars.ContextVar("slmctl_asked_recipe", default=None)


@contextlib.contextmanager
def asking(recipe):
    """While a verb's pipeline runs, the slmctl.recipe.Recipe it was given: every record built meanwhile
    (by whichever exporter, quantiser or writer the verb reaches) keeps it."""
    token = _ASKED.set(recipe)
    try:
        yield recipe
    finally:
        _ASKED.reset(token)


def build(verb: str, recipe: dict[str, Any], inputs: list[dict[str, Any]], typed=None) -> dict[str, Any]:
    """The record of one step: ``recipe`` is what was done (the method's resolved settings and measurements);
    ``typed`` (default: the one ``asking`` holds), the slmctl.recipe.Recipe that was asked, is kept with its
    schema as ``typed_recipe`` (slmctl.recipe.from_provenance reads it back)."""
    prov = {"tool": "slmctl", "verb": verb, "recipe": recipe, "inputs": inputs, "versions": versions()}
    typed = typed if typed is not None else _ASKED.get()
    if typed is not None:
        prov["typed_recipe"] = typed.record()
    return prov


def dumps(prov: dict[str, Any]) -> str:
    return json.dumps(prov, sort_keys=True, separators=(",", ":"))


def chain(prov: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Flatten a provenance record into steps, oldest first."""
    steps: list[dict[str, Any]] = []
    seen: set[str] = set()

    def walk(p: dict[str, Any]) -> None:
        key = dumps(p)
        if key in seen:  # a shared ancestor (e.g. distill's teacher and student both come from base)
            return
        seen.add(key)
        for inp in p.get("inputs", []):
            if isinstance(inp, dict) and isinstance(inp.get("provenance"), dict):
                walk(inp["provenance"])
        steps.append(p)

    if prov:
        walk(prov)
    return steps


def verify(prov: dict[str, Any] | None) -> dict[str, Any]:
    """Re-hash every recorded input found on disk: {'ok': bool, 'inputs': [{ref, path, status}]}.

    status is ``match``, ``mismatch`` (the file changed since the step ran) or ``missing``.
    """
    from .io.hashing import artifact_sha256

    rows = []
    seen: set[tuple[str, str]] = set()
    for step in chain(prov):
        for inp in step.get("inputs", []):
            path, want = inp.get("path"), inp.get("sha256")
            if not path or (path, want) in seen:
                continue
            seen.add((path, want))
            p = Path(path)
            if not p.exists():
                status = "missing"
            else:
                status = "match" if artifact_sha256(p) == want else "mismatch"
            rows.append({"verb": step.get("verb"), "ref": inp.get("ref"), "path": path, "status": status})
    return {"ok": all(r["status"] != "mismatch" for r in rows), "checked": sum(r["status"] != "missing" for r in rows),
            "inputs": rows}
