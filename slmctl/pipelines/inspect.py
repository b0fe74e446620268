"""The ``inspect`` verb: what a model artifact holds, without loading it into a framework."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .. import provenance

Log = Callable[[str], None]


def _nolog(msg: str) -> None:
    pass


def inspect(ref: str, *, allow_pickle: bool = False, verify: bool = False, check: bool = False,
            log: Log = _nolog) -> dict[str, Any]:
    """What a model artifact holds: format, architecture, parameters, dtypes, size, tokenizer, provenance.

    With ``verify``, every recorded input that still exists is hashed again and compared. With
    ``check``, the artifact's own runtime loads it, generates from a short prompt and its logits are
    compared with slmctl's reference (``info["check"]``, see slmctl.eval.check).
    """
    from collections import Counter

    from ..io.resolve import load_artifact

    art, path = load_artifact(ref, allow_pickle=allow_pickle, log=log)
    dtypes: Counter[str] = Counter()
    params = 0
    for t in art.tensors.values():
        dtypes[t.dtype] += t.numel
        params += t.numel
    info: dict[str, Any] = {
        "path": str(path),
        "format": art.format,
        "architecture": art.architecture,
        "model_type": art.model_type,
        "parameters": params,
        "tensors": len(art.tensors),
        "dtypes": dict(dtypes.most_common()),
        "size_bytes": art.size_on_disk(),
        "quantization": _quantization(art, dtypes),
        "tokenizer": _tokenizer_info(art, path),
        "config": _config_summary(art),
    }
    prov = art.provenance()
    info["provenance"] = [
        {"verb": s.get("verb"), "recipe": s.get("recipe"),
         "inputs": [{k: v for k, v in i.items() if k != "provenance"} for i in s.get("inputs", [])],
         "slmctl": s.get("versions", {}).get("slmctl")}
        for s in provenance.chain(prov)
    ]
    if verify:
        info["verify"] = provenance.verify(prov)
    if check:
        from ..eval.check import check as run_check

        info["check"] = run_check(art, log=log)
    return info


def _quantization(art, dtypes) -> Any:
    if art.config and art.config.get("quantization_config"):
        return art.config["quantization_config"]
    if art.format == "gguf":
        ft = art.metadata.get("general.file_type")
        try:
            from gguf import LlamaFileType

            ft = LlamaFileType(ft).name.removeprefix("MOSTLY_") if ft is not None else None
        except (ValueError, ImportError):
            pass
        from collections import Counter

        counts = Counter(t.dtype for t in art.tensors.values())
        return {"file_type": ft, "tensor_types": dict(dtypes), "tensor_counts": dict(counts.most_common())}
    return None


def _tokenizer_info(art, path: Path) -> dict[str, Any] | None:
    import json

    if art.format == "gguf":
        m = art.metadata
        toks = m.get("tokenizer.ggml.tokens")
        if toks is None:
            return None
        return {"type": m.get("tokenizer.ggml.model"), "pre": m.get("tokenizer.ggml.pre"), "vocab_size": len(toks),
                "bos_token_id": m.get("tokenizer.ggml.bos_token_id"), "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
                "chat_template": "tokenizer.chat_template" in m}
    folder = path if path.is_dir() else path.parent
    tj = folder / "tokenizer.json"
    if tj.is_file():
        try:
            doc = json.loads(tj.read_text())
            model = doc.get("model", {})
            vocab = set(model.get("vocab", {}) or {})
            vocab |= {t.get("content") for t in doc.get("added_tokens", []) if isinstance(t, dict)}
            return {"type": model.get("type"), "vocab_size": len(vocab),
                    "file": "tokenizer.json"}
        except (OSError, ValueError, AttributeError):
            return {"file": "tokenizer.json", "error": "unreadable"}
    if (folder / "tokenizer.model").is_file():
        return {"type": "sentencepiece", "file": "tokenizer.model"}
    return None


def _config_summary(art) -> dict[str, Any] | None:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
            "vocab_size", "max_position_embeddings", "tie_word_embeddings", "n_embd", "n_layer", "n_head")
    if art.config:
        return {k: art.config[k] for k in keys if k in art.config}
    if art.format == "gguf":
        a = art.metadata.get("general.architecture", "")
        out = {}
        for k in ("embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
                  "feed_forward_length", "context_length"):
            v = art.metadata.get(f"{a}.{k}")
            if v is not None:
                out[k] = v.tolist() if hasattr(v, "tolist") else v
        return out
    return None
