"""Tiny Llama checkpoints and an offline tokenizer for tests and benchmarks.

Nothing here touches the Hugging Face hub: the tokenizer is a word-level vocabulary trained on a few
sentences, the model is a random-weight Llama built from a config and saved as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "the cat sat on the mat and looked at the dog",
    "a dog ran in the park with a red ball",
    "spectrum trains only the most informative layers of a model",
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france ? the capital of france is paris",
    "how many legs does a cat have ? a cat has four legs",
    "large language models learn from text one token at a time",
    "the sun rises in the east and sets in the west",
    "water is wet and fire is hot and ice is cold",
    "one two three four five six seven eight nine ten",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_tokenizer(extra_text: list[str] | None = None):
    """A word-level tokenizer with bos/eos/pad/unk, chat role markers and a simple chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=specials)
    tok.train_from_iterator(SENTENCES + list(extra_text or []), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(
    path: str | Path,
    dtype: str = "bfloat16",
    hidden_size: int = 32,
    layers: int = 2,
    max_positions: int = 128,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> Path:
    """Save a random tiny Llama (safetensors) plus the tiny tokenizer to ``path``; return the path."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    path = Path(path)
    tok = build_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_cpt_data(path: str | Path, repeat: int = 8, field: str = "text") -> Path:
    """A small jsonl corpus of the tokenizer's sentences (repeated, so a few steps can fit it)."""
    path = Path(path)
    path.write_text("".join(json.dumps({field: s}) + "\n" for _ in range(repeat) for s in SENTENCES))
    return path


QA = [
    ("what is the capital of france ?", "the capital of france is paris"),
    ("how many legs does a cat have ?", "a cat has four legs"),
    ("what does spectrum train ?", "spectrum trains only the most informative layers"),
    ("where does the sun rise ?", "the sun rises in the east"),
]


def write_sft_data(path: str | Path, repeat: int = 8, style: str = "messages") -> Path:
    """A small jsonl chat set: ``messages`` conversations or ``prompt``/``completion`` pairs."""
    path = Path(path)
    rows = []
    for _ in range(repeat):
        for q, a in QA:
            if style == "messages":
                rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            else:
                rows.append({"prompt": q, "completion": a})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
