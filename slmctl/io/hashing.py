"""Content hashes of artifacts, cached by (path, size, mtime) so repeated runs stay fast."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from .artifact import PROVENANCE_FILE


def _cache_file() -> Path:
    from ..paths import cache_dir

    return cache_dir() / "hashes.json"


def file_sha256(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache: dict[str, str] = {}
    cf = _cache_file()
    try:
        cache = json.loads(cf.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    cache[key] = digest
    try:
        cf.parent.mkdir(parents=True, exist_ok=True)
        tmp = cf.with_name(f".{cf.name}.{os.getpid()}.{threading.get_ident()}")  # one per writer thread
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, cf)
    except OSError:
        pass
    return digest


def artifact_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's sorted (name, file hash) manifest (provenance files excluded)."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        rel = p.relative_to(path).as_posix()
        if rel == PROVENANCE_FILE or rel.startswith("."):
            continue
        h.update(f"{rel}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
