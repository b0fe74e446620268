"""An Ollama Modelfile beside a GGUF: FROM, the chat template in Go-template form, the system prompt, stop tokens.

Ollama's TEMPLATE is a Go text/template over ``.System``, ``.Messages`` (``.Role``, ``.Content``) and
``.Prompt``; HF tokenizers carry a Jinja template. A general Jinja -> Go translation is not possible, so the
template's *style* is recognised by its control tokens (ChatML, Llama 3, Gemma, Phi-3, Mistral [INST],
Zephyr) and written as the Go template of that style; the default system prompt a ChatML template
injects is carried over as SYSTEM. An unknown style gets no TEMPLATE (Ollama then passes the prompt
as it is) and a warning. https://github.com/ollama/ollama/blob/main/docs/modelfile.md
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ChatStyle:
    name: str
    template: str
    stops: list[str]
    system: str | None = None
    notes: list[str] = field(default_factory=list)


_CHATML = ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
           "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
           "<|im_start|>assistant\n")
_LLAMA3 = ("{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
           "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
           "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n")
_GEMMA = ("{{- range $i, $_ := .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}user{{ end }}\n"
          "{{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}{{ .Content }}<end_of_turn>\n{{ end }}"
          "<start_of_turn>model\n")
_PHI3 = ("{{- if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}"
         "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n")
_ZEPHYR = ("{{- if .System }}<|system|>\n{{ .System }}</s>\n{{ end }}"
           "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n")
_MISTRAL = ("{{- range $i, $_ := .Messages }}{{ if eq .Role \"user\" }}[INST] "
            "{{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}{{ .Content }} [/INST]"
            "{{ else if eq .Role \"assistant\" }}{{ .Content }}</s>{{ end }}{{ end }}")


def _default_system(jinja: str) -> str | None:
    """The system prompt a ChatML template writes when the conversation has none (SmolLM2, Qwen2.5)."""
    # the newline after "system" is a real one (tokenizer_config.json's "\n") or a Jinja escape ("\\n")
    m = re.search(r"<\|im_start\|>system(?:\\n|\n)(.+?)<\|im_end\|>", jinja, re.S)
    if not m or "{{" in m.group(1) or "message" in m.group(1):
        return None
    return m.group(1).replace("\\n", "\n")


def chat_style(jinja: str | None) -> ChatStyle | None:
    """The Ollama template, stop strings and default system prompt for an HF Jinja chat template."""
    if not jinja:
        return None
    if "<|im_start|>" in jinja:
        return ChatStyle("chatml", _CHATML, ["<|im_start|>", "<|im_end|>"], _default_system(jinja))
    if "<|start_header_id|>" in jinja:
        return ChatStyle("llama3", _LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    if "<start_of_turn>" in jinja:
        return ChatStyle("gemma", _GEMMA, ["<start_of_turn>", "<end_of_turn>"])
    if "<|end|>" in jinja and "<|assistant|>" in jinja:
        return ChatStyle("phi3", _PHI3, ["<|end|>", "<|user|>", "<|assistant|>"])
    if "<|assistant|>" in jinja and "<|user|>" in jinja:
        return ChatStyle("zephyr", _ZEPHYR, ["</s>", "<|user|>", "<|assistant|>"])
    if "[INST]" in jinja:
        return ChatStyle("mistral", _MISTRAL, ["[INST]", "[/INST]", "</s>"])
    return None


def _quote(s: str) -> str:
    """A Modelfile string: triple quotes for multi-line text, JSON-style quotes otherwise."""
    if "\n" in s or '"' in s:
        if '"""' in s:
            return json.dumps(s)
        return '"""' + s + '"""'
    return json.dumps(s)


def modelfile_path(gguf: Path) -> Path:
    """Where the Modelfile of a GGUF goes: beside it, same stem (model-Q4_K_M.gguf -> model-Q4_K_M.Modelfile)."""
    return gguf.with_name(gguf.stem + ".Modelfile")


def modelfile_text(gguf_name: str, *, chat_template: str | None, eos_tokens: list[str]) -> tuple[str, ChatStyle | None]:
    """The Modelfile for the GGUF named ``gguf_name`` in the same folder, and the recognised style."""
    style = chat_style(chat_template)
    lines = [f"# Ollama Modelfile written by slmctl: ollama create NAME -f {Path(gguf_name).stem}.Modelfile",
             f"FROM ./{gguf_name}"]
    stops: list[str] = []
    if style is not None:
        lines.append(f"TEMPLATE {_quote(style.template)}")
        if style.system:
            lines.append(f"SYSTEM {_quote(style.system)}")
        stops += style.stops
    else:
        lines.append("# no TEMPLATE: the tokenizer has no chat template slmctl recognises "
                     "(ChatML, Llama 3, Gemma, Phi-3, Zephyr, Mistral)")
    for t in eos_tokens:
        if t and t not in stops:
            stops.append(t)
    for s in stops:
        lines.append(f"PARAMETER stop {_quote(s)}")
    return "\n".join(lines) + "\n", style


def write_modelfile(gguf: Path, out: Path, *, force: bool = False) -> tuple[Path, ChatStyle | None]:
    """Write the Modelfile for ``gguf`` at ``out`` from the GGUF's own metadata (its chat template, EOS token)."""
    from .artifact import open_artifact
    from .atomic import atomic_path

    m = open_artifact(gguf).metadata
    tokens = m.get("tokenizer.ggml.tokens") or []
    eos = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        i = m.get(key)
        if isinstance(i, int) and 0 <= i < len(tokens) and tokens[i] not in eos:
            eos.append(tokens[i])
    text, style = modelfile_text(gguf.name, chat_template=m.get("tokenizer.chat_template"), eos_tokens=eos)
    with atomic_path(out, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out, style
