"""A GGUF model's transformers config, where transformers' own reading of the metadata is not enough.

llama.cpp leaves some of Gemma 3's config implicit: the pattern of sliding-window and full-attention layers,
the RoPE base of the local (sliding) layers and the query scale are fixed in its code, not written to the
file. transformers fills them with its defaults, which happen to be those of Gemma 3; this module states
them from the metadata and llama.cpp's rules instead, so a converted model is right by construction and a
test can hold transformers' reading against it. Every other architecture keeps transformers' config.

``GEMMA3_CHAT_TEMPLATE`` is the chat template Google's Gemma 3 tokenizers carry; GGUF files of the base
model often leave it out, and chat data and the study's chat loss need one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import SpectrumError

# The turn format of Gemma 3 (google/gemma-3-*'s tokenizer_config.json, text parts only): a system message is
# folded into the first user turn, the assistant's role is "model", every turn ends with <end_of_turn>.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    '{%- set first_user_prefix = "" -%}'
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    '{{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}'
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}"
    '{%- set role = "model" -%}'
    "{%- else -%}"
    "{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    '{{ raise_exception("Invalid content type") }}'
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\n' }}"
    "{%- endif -%}"
)
CHAT_TEMPLATES = {"gemma3": GEMMA3_CHAT_TEMPLATE}
STATED = (
    "gemma3",
)  # the GGUF architectures whose config this module states  # for a GGUF of this architecture that carries none

_LLAMA_CPP_SWA_PATTERN = 6  # llama.cpp: every 6th Gemma 3 layer attends globally, the others in the window
_LLAMA_CPP_LOCAL_ROPE_BASE = 10_000.0  # llama.cpp: Gemma 3's sliding layers' RoPE base


def metadata(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """A GGUF file's metadata as plain values (the tokenizer's arrays left out) and its tensors' shapes
    (rows first, as in Hugging Face)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type", "merges")):
            meta[key + ".count"] = len(f.data)
            continue
        meta[key] = f.contents()
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}
    return meta, shapes


def hf_config_fields(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """The transformers config (``to_dict`` fields) of a GGUF model whose config this module states, else None."""
    arch = meta.get("general.architecture")
    if arch == "gemma3":
        return gemma3_text_config(meta, shapes)
    return None


def gemma3_text_config(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """A ``gemma3_text`` config from Gemma 3 GGUF metadata, with llama.cpp's implicit values where it has none.

    - ``head_dim`` is the key length (llama.cpp requires value length == key length for Gemma 3);
    - ``layer_types``: ``attention.sliding_window_pattern`` when the file has it (an int period, or one bool per
      layer, true = sliding), else llama.cpp's fixed period of 6 (layers 5, 11, 17, ... attend globally);
    - RoPE: ``rope.freq_base`` for the global layers, ``rope.freq_base_swa`` (else 10 000) for the sliding ones;
      linear ``rope.scaling`` applies to the global layers only (as in Gemma 3's own config);
    - ``query_pre_attn_scalar``: 1 / ``attention.scale``² when the file has a scale, else what llama.cpp uses:
      hidden / heads for the 27B model, the head dimension otherwise;
    - softcapping only when the file names it (Gemma 3 has none; Gemma 2 had both);
    - the embedding is tied when the file has no ``output.weight``; the vocabulary is the embedding's rows.
    """
    p = "gemma3."

    def need(key: str) -> Any:
        if p + key not in meta:
            raise SpectrumError(f"The Gemma 3 GGUF file has no {p + key!r} in its metadata; it cannot be converted.")
        return meta[p + key]

    layers = int(need("block_count"))
    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    head_dim = int(meta.get(p + "attention.key_length") or hidden // heads)
    value_dim = int(meta.get(p + "attention.value_length") or head_dim)
    if value_dim != head_dim:
        raise SpectrumError(f"Gemma 3 GGUF with key length {head_dim} != value length {value_dim}: not supported.")
    embd = shapes.get("token_embd.weight")
    vocab = int(meta.get(p + "vocab_size") or (embd[0] if embd else 0) or meta.get("tokenizer.ggml.tokens.count", 0))
    pattern = meta.get(p + "attention.sliding_window_pattern", _LLAMA_CPP_SWA_PATTERN)
    if isinstance(pattern, list | tuple):  # one flag per layer: true = sliding window
        if len(pattern) != layers:
            raise SpectrumError(f"sliding_window_pattern has {len(pattern)} entries for {layers} layers.")
        layer_types = ["sliding_attention" if bool(x) else "full_attention" for x in pattern]
    else:
        period = int(pattern)
        layer_types = ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(layers)]
    full_rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(meta.get(p + "rope.freq_base", 1e6))}
    scaling = meta.get(p + "rope.scaling.type")
    if scaling and scaling != "none":
        if scaling != "linear":
            raise SpectrumError(f"Gemma 3 GGUF with rope scaling {scaling!r}: only linear is supported.")
        full_rope = {**full_rope, "rope_type": "linear", "factor": float(need("rope.scaling.factor"))}
    local_base = float(meta.get(p + "rope.freq_base_swa", _LLAMA_CPP_LOCAL_ROPE_BASE))
    scale = meta.get(p + "attention.scale")
    if scale:
        qscalar: float = round(1.0 / float(scale) ** 2, 3)
    elif str(meta.get("general.size_label", "")).upper() == "27B":
        qscalar = hidden // heads
    else:
        qscalar = head_dim

    def tok(name: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{name}_token_id")
        return int(v) if v is not None else None

    cfg: dict[str, Any] = {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(p + "attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": int(need("context_length")),
        # float32 in the file (9.9999997e-07): the decimal it was written from
        "rms_norm_eps": float(f"{float(meta.get(p + 'attention.layer_norm_rms_epsilon', 1e-6)):.6g}"),
        "sliding_window": int(need("attention.sliding_window")),
        "layer_types": layer_types,
        "rope_parameters": {
            "full_attention": full_rope,
            "sliding_attention": {"rope_type": "default", "rope_theta": local_base},
        },
        "query_pre_attn_scalar": qscalar,
        "final_logit_softcapping": _float_or_none(meta.get(p + "final_logit_softcapping")),
        "attn_logit_softcapping": _float_or_none(meta.get(p + "attn_logit_softcapping")),
        "tie_word_embeddings": "output.weight" not in shapes,
        "attention_bias": "blk.0.attn_q.bias" in shapes,
        "bos_token_id": tok("bos"),
        "eos_token_id": tok("eos"),
        "pad_token_id": tok("padding"),
    }
    return cfg


def _float_or_none(v: Any) -> float | None:
    return float(v) if v else None


def architecture(path: str | Path) -> str | None:
    """``general.architecture`` when it is the file's first metadata entry (llama.cpp writes it first), read
    without parsing the rest (a 262k-token vocabulary takes seconds); None otherwise."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(24 + 8 + 64 + 4 + 8 + 64)
    except OSError:
        return None
    if head[:4] != b"GGUF" or len(head) < 32:
        return None
    (klen,) = struct.unpack_from("<Q", head, 24)
    if head[32 : 32 + klen] != b"general.architecture":
        return None
    at = 32 + klen
    vtype, vlen = struct.unpack_from("<IQ", head, at) if len(head) >= at + 12 else (None, 0)
    if vtype != 8:  # GGUF string
        return None
    value = head[at + 12 : at + 12 + vlen]
    return value.decode("utf-8", "replace") if len(value) == vlen else None


def transformers_config(path: str | Path):
    """The transformers config of the GGUF file ``path``: this module's where it states one, else transformers'."""
    from transformers import AutoConfig

    if architecture(path) in STATED:
        fields = hf_config_fields(*metadata(path))
        if fields is not None:
            return AutoConfig.for_model(fields.pop("model_type"), **fields)
    path = Path(path)
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
