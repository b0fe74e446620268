"""Read an HF folder's tokenizer (tokenizer.json, tokenizer_config.json, chat template) as plain data.

The result is what GGUF's ``tokenizer.*`` metadata needs: tokens in id order, token types, merges,
the pre-tokenizer kind, special token ids, add_bos/add_eos and the chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import FormatError, UnsupportedError

# llama.cpp token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of known pre-tokenizers -> llama.cpp's pre-tokenizer names (llama-vocab.cpp)
_LLAMA3_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
_QWEN2_RE = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
# o200k (GPT-4o, Phi-4-mini) and Tekken (Mistral NeMo, Nemotron-H): case-split words, the first with contractions
_CASE_WORD = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
_GPT4O_RE = _CASE_WORD + r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
_TEKKEN_RE = _CASE_WORD + r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"


@dataclass
class Vocab:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad/... -> id
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | None = None
    scores: list[float] | None = None  # SentencePiece only
    add_space_prefix: bool | None = None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})", hint="re-save the tokenizer with transformers") from None


def _flatten(pt: dict | None) -> list[dict]:
    if not pt:
        return []
    if pt.get("type") == "Sequence":
        return [x for p in pt.get("pretokenizers", []) for x in _flatten(p)]
    return [pt]


def detect_pre(tok: dict, config: dict) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json, from its structure."""
    parts = _flatten(tok.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    splits = [p for p in parts if p.get("type") == "Split"]
    if splits:
        pat = splits[0].get("pattern", {})
        rx = pat.get("Regex") or pat.get("String") or ""
        if rx.startswith(_LLAMA3_RE):
            return "llama-bpe"
        if rx.startswith(_QWEN2_RE):
            return "qwen2"
        if rx.startswith(_GPT4O_RE):
            return "gpt-4o"
        if rx.startswith(_TEKKEN_RE):
            return "tekken"
        return "default"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        # SmolLM folders rebuilt from GGUF by transformers lose the Digits split; their merges never
        # join digits, so "smollm" tokenises them the same and keeps the model's own pre-tokenizer
        name = str(config.get("_name_or_path") or config.get("_model_name_or_path") or "").lower()
        return "smollm" if "smollm" in name else "gpt-2"
    return "default"


def _content(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def read_vocab(folder: Path, config: dict, vocab_size: int) -> Vocab:
    """The tokenizer of an HF model folder as GGUF needs it (byte-level BPE)."""
    tj = folder / "tokenizer.json"
    tok = _read(tj) if tj.is_file() else {}
    model = tok.get("model") or {}
    if (folder / "tokenizer.model").is_file() and (not tok or model.get("byte_fallback") or model.get("type") == "Unigram"):
        return _sentencepiece(folder, tok, config, vocab_size)
    if not tok:
        raise UnsupportedError(f"{folder}: no tokenizer.json, so the GGUF would have no vocabulary",
                               hint="put the model's tokenizer.json (or SentencePiece tokenizer.model) next to config.json")
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return _sentencepiece_bpe(folder, tok, config, vocab_size)
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedError(f"{tj}: tokenizer model {model.get('type')!r}"
                               f"{' with byte fallback' if model.get('byte_fallback') else ''} is not supported",
                               hint="slmctl writes byte-level BPE (tokenizer.json) and SentencePiece (tokenizer.model) vocabularies")
    vocab, added, n = _bpe_vocab(tok, vocab_size)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [UNUSED] * n
    for s, i in vocab.items():
        if 0 <= i < n:
            tokens[i] = s
            types[i] = NORMAL
    for i, t in added.items():
        if 0 <= i < n:
            types[i] = CONTROL if t.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]

    v = Vocab("gpt2", detect_pre(tok, config), tokens, types, merges)
    _specials(v, folder, tok, config, vocab)
    return v


def _specials(v: Vocab, folder: Path, tok: dict, config: dict, vocab: dict[str, int]) -> None:
    """Special token ids, add_bos/add_eos and the chat template, into ``v``."""
    cfg_path = folder / "tokenizer_config.json"
    tcfg = _read(cfg_path) if cfg_path.is_file() else {}
    for kind in ("bos", "eos", "unk", "pad", "sep", "cls", "mask"):
        s = _content(tcfg.get(f"{kind}_token"))
        if s is not None and s in vocab:
            v.special[kind] = vocab[s]
        elif isinstance(config.get(f"{kind}_token_id"), int):
            v.special[kind] = config[f"{kind}_token_id"]
    add_bos, add_eos = tcfg.get("add_bos_token"), tcfg.get("add_eos_token")
    for p in _flatten_post(tok.get("post_processor") or {}):
        if p.get("type") == "TemplateProcessing":
            seq = list(p.get("single", []))
            if add_bos is None:
                add_bos = bool(seq and "SpecialToken" in seq[0])
            if add_eos is None:
                add_eos = bool(len(seq) > 1 and "SpecialToken" in seq[-1])
    if add_bos is None and v.model == "llama":
        add_bos = True  # SentencePiece llama tokenizers add <s> unless told otherwise
    v.add_bos, v.add_eos = bool(add_bos), bool(add_eos)
    template = tcfg.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: keep the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    v.chat_template = template


def _sentencepiece(folder: Path, tok: dict, config: dict, vocab_size: int) -> Vocab:
    """llama-style SentencePiece: pieces, scores and types from tokenizer.model, added tokens on top."""
    try:
        import sentencepiece as spm
    except ImportError:
        raise UnsupportedError("a SentencePiece tokenizer.model needs the sentencepiece package",
                               hint="pip install sentencepiece") from None
    path = folder / "tokenizer.model"
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError) as exc:
        raise FormatError(f"{path}: not a SentencePiece model ({exc})") from None
    n = max(vocab_size, sp.vocab_size())
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-1000.0] * n
    types = [UNUSED] * n
    for i in range(sp.vocab_size()):
        tokens[i] = sp.id_to_piece(i)
        scores[i] = float(sp.get_score(i))
        types[i] = (UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
                    else BYTE if sp.is_byte(i) else NORMAL)
    vocab = {t: i for i, t in enumerate(tokens)}
    for t in tok.get("added_tokens", []) if tok else []:
        i = t.get("id")
        # a piece SentencePiece keeps as normal but tokenizer.json lists as added (Gemma's turn markers) is matched whole
        if isinstance(i, int) and 0 <= i < n and (tokens[i] != t.get("content") or types[i] == NORMAL):
            tokens[i] = t["content"]
            types[i] = CONTROL if t.get("special") else USER_DEFINED
            vocab[t["content"]] = i
    v = Vocab("llama", "default", tokens, types, [], scores=scores)
    v.add_space_prefix = _space_prefix(tok, sp)
    _specials(v, folder, tok or {}, config, vocab)
    return v


def _bpe_vocab(tok: dict, vocab_size: int) -> tuple[dict[str, int], dict[int, dict], int]:
    """(token -> id with the added tokens, added tokens by id, GGUF vocabulary size). Added tokens past the
    model's vocabulary (transformers' GGUF tokenizer loader appends <|endoftext|>) are left out: llama.cpp
    wants exactly one token per embedding row."""
    vocab: dict[str, int] = dict(tok["model"].get("vocab") or {})
    n = max(vocab_size, max(vocab.values(), default=-1) + 1)
    added = {t["id"]: t for t in tok.get("added_tokens", []) if isinstance(t, dict) and "id" in t}
    if not vocab_size:
        n = max(n, max(added, default=-1) + 1)
    added = {i: t for i, t in added.items() if 0 <= i < n}
    for i, t in added.items():
        vocab[t["content"]] = i
    return vocab, added, n


def _sentencepiece_bpe(folder: Path, tok: dict, config: dict, vocab_size: int) -> Vocab:
    """A SentencePiece BPE kept only as tokenizer.json (byte-fallback BPE, as a Gemma folder imported from GGUF):
    llama.cpp's SentencePiece tokenizer merges the pair whose result scores highest, so each token scores
    minus the rank of the merge that makes it; ``<0xNN>`` pieces are byte tokens."""
    model = tok["model"]
    vocab, added, n = _bpe_vocab(tok, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", ""), r)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [UNUSED] * n
    scores = [-1e9] * n
    for s, i in vocab.items():
        if not 0 <= i < n:
            continue
        tokens[i] = s
        byte = len(s) == 6 and s.startswith("<0x") and s.endswith(">")
        types[i] = UNKNOWN if s == model.get("unk_token") else BYTE if byte else NORMAL
        scores[i] = -float(rank[s]) if s in rank else (0.0 if len(s) == 1 else -float(len(merges) + i))
    for i, t in added.items():
        if 0 <= i < n and types[i] != UNKNOWN:
            types[i] = CONTROL if t.get("special") else USER_DEFINED
    v = Vocab("llama", "default", tokens, types, [], scores=scores)
    v.add_space_prefix = _space_prefix(tok, None)
    _specials(v, folder, tok, config, vocab)
    return v


def _space_prefix(tok: dict, sp) -> bool:
    """Whether "▁" is prepended to the text (llama.cpp's add_space_prefix), as the tokenizer transformers uses does:
    HF's llama tokenizers prepend it in the normalizer or a Metaspace pre-tokenizer; Gemma's only replace
    spaces. Without a tokenizer.json, SentencePiece itself is asked."""
    if not tok:
        pieces = sp.encode_as_pieces("a")
        return bool(pieces) and pieces[0].startswith("\u2581")
    norm = tok.get("normalizer") or {}
    if any(n.get("type") == "Prepend" for n in (norm.get("normalizers") or [norm])):
        return True
    for p in _flatten(tok.get("pre_tokenizer")):
        if p.get("type") == "Metaspace":
            return p.get("prepend_scheme", "always") != "never" and p.get("add_prefix_space", True) is not False
    return False


def _flatten_post(p: dict) -> list[dict]:
    if p.get("type") == "Sequence":
        return [x for q in p.get("processors", []) for x in _flatten_post(q)]
    return [p] if p else []
