"""A selection in words, for people: what it trains besides its ranked modules, by which rule, how much of the
model, and the notes `spectrum select`, the trainer's log and the report add.
"""

from __future__ import annotations

from typing import Any

from .axolotl import pattern_module
from .selection_file import Selection


def extras_text(sel: Selection, tied: bool) -> str:
    """`` + model.embed_tokens (tied to lm_head)``: what a selection trains besides its ranked modules."""
    names = [pattern_module(p) or p for p in sel.extras]
    if tied and "lm_head" in names and any(n.endswith("embed_tokens") for n in names):
        names = [n + (" (tied to lm_head)" if n.endswith("embed_tokens") else "") for n in names if n != "lm_head"]
    return f" + {', '.join(names)}" if names else ""


def embedding_note(trainable: int | None, always: int | None, flags: str) -> str | None:
    """One line when the always-trained embeddings and head are most of what trains, naming the flags that
    drop them: Gemma-3-270M's tied 262,144 x 640 embedding is 168M of Spectrum-25's 190M trainable parameters."""
    if not trainable or not always or 2 * always <= trainable:
        return None
    return (
        f"note: {always:,} of the {trainable:,} trainable parameters ({100 * always / trainable:.0f}%) are "
        f"embeddings/lm_head, which every selection trains; {flags} to train only the selected modules."
    )


def rule_text(sel: Any) -> str | None:
    """Which rule and percent made a selection, as far as its file records it (a .yaml or .txt does not)."""
    rule = dict(getattr(sel, "rule", None) or {})
    text = _rule_words(rule)
    if text is not None and rule.get("min_layer") is not None:
        text += f", from layer {rule['min_layer']} up"
    return text


def _rule_words(rule: dict[str, Any]) -> str | None:
    p = rule.get("top_percent")
    if rule.get("compat"):
        return f"the reference tool's rule (--compat): the top {p:g}% of each module type"
    if rule.get("rule") == "per-type":
        return f"the per-type rule (Spectrum-{p:g}): the top {p:g}% of each module type"
    if rule.get("rule") == "global":
        return f"the global rule: the top {p:g}% of all ranked modules together"
    if rule.get("rule") == "budget":
        return f"the budget rule: {rule.get('budget')} ({rule.get('budget_params', 0):,} parameters)"
    if rule.get("rule") == "top-layers":
        layers = rule.get("layers") or []
        span = f"layers {min(layers)}-{max(layers)}" if len(layers) > 1 else f"layer {layers[0]}" if layers else ""
        return (
            f"the top-layers rule: {span}, whole, within {rule.get('budget')} "
            f"({rule.get('budget_params', 0):,} parameters)"
        )
    if rule.get("rule") == "top-layers-per-type":
        return f"the top-layers-per-type rule: {p:g}% of each module type, from the top layers down"
    if rule.get("rule") == "random":
        matched = dict(rule.get("matched") or {})
        what = matched.get("selection") or _rule_words(matched) or "the reference pick"
        bins = rule.get("depth_bins", 4)
        slices = "quarter of the layers" if bins == 4 else f"depth slice ({bins} of the layers)"
        per = f"per type and {slices}" if rule.get("match_depth") else "per type"
        return f"a random draw (seed {rule.get('seed')}) with as many modules {per} as {what}"
    return None


#: What the study (docs/evidence.md) found so far, printed under every selection ranked by a score; it follows
#: the evidence and changes when the evidence does.
EVIDENCE = (
    "[dim]evidence (docs/evidence.md): on the study's fact task the SNR pick learned\n"
    "more slowly than random picks of its size per type and forgot no less (matched\n"
    "to its depth, no different); whole top layers of its size learned faster, as\n"
    "fast as full fine-tuning, and forgot less.\n"
    "Recommended for SFT: --rule top-layers\n"
    "(with --embeddings freeze: least forgetting, fastest steps, slower learning).\n"
    "For continued pretraining train LoRA of Spectrum-25's size (--method lora):\n"
    "it learned fastest, ended below full fine-tuning's held-out loss and forgot\n"
    "less. Where forgetting matters most: --rule top-layers trained at --lr 3e-4\n"
    "ended level with LoRA and forgot the least (at 1e-3 they lost to both).\n"
    "Compare your own pick: --random --match SEL [--match-depth][/]"
)


def evidence_note(sel: Any) -> str | None:
    """The study's advice for a selection ranked by a score (the random and top-layers rules rank none)."""
    rule = dict(getattr(sel, "rule", None) or {}).get("rule")
    return EVIDENCE if rule in ("per-type", "global", "budget") else None


def tied_note(sel: Selection) -> str | None:
    """A line when lm_head is tied and the embedding and head options disagree: which way the shared tensor went."""
    if not sel.rule.get("lm_head_tied") or sel.rule.get("train_embeddings") == sel.rule.get("train_lm_head"):
        return None
    return (
        "note: lm_head is tied to the input embeddings (one tensor, which Axolotl and freeze know by "
        "its embedding name), so it "
        + (
            "trains with them"
            if sel.rule.get("train_embeddings")
            else "is trained through the embedding pattern this writes"
        )
    )


def share_text(sel: Selection) -> str | None:
    """``trains 8,192 of 69,952 parameters (11.7%)``, when the selection knows both counts."""
    if not (sel.trainable_params and sel.total_params):
        return None
    return (
        f"trains {sel.trainable_params:,} of {sel.total_params:,} parameters "
        f"({100 * sel.trainable_params / sel.total_params:.1f}%)"
    )


def embeddings_line(sel: Selection) -> str | None:
    """``embeddings: trained (28,311,552 parameters, 53% of what trains); --embeddings freeze leaves them out``:
    what the one switch costs, which on a small model with a large vocabulary is most of what trains."""
    rule = sel.rule
    emb, head, tied = rule.get("train_embeddings"), rule.get("train_lm_head"), rule.get("lm_head_tied")
    if not emb and not head:
        return "embeddings: frozen (with the output head); --embeddings train adds them"
    names = [
        n
        for n, on in (("embeddings", emb or tied), ("lm_head", head and not tied), ("norms", rule.get("train_norms")))
        if on
    ]
    what = "/".join(names)
    extra, trainable = sel.extra_params, sel.trainable_params
    if not (extra and trainable):
        return f"{what}: trained; --embeddings freeze leaves them out"
    line = (
        f"{what}: trained ({extra:,} parameters, {100 * extra / trainable:.0f}% of what trains); "
        "--embeddings freeze leaves them out"
    )
    return f"[yellow]{line}[/]" if 2 * extra > trainable else line


def backward_text(names: list[str], layers: int | None) -> str:
    """Where the backward pass stops for these trained tensor or module names: ``backward from layer 23 of 30``, or
    ``backward through all 30 layers (the embeddings train)`` (``backward.lowest_layer``)."""
    from .backward import lowest_layer

    lowest = lowest_layer(names)
    of = f" of {layers}" if layers else ""
    if lowest is None:
        return "backward through no decoder layer (only the head and final norm train)"
    if lowest == 0:
        why = "the embeddings train" if any(_is_embedding(n) for n in names) else "layer 0 trains"
        return f"backward through all{f' {layers}' if layers else ''} layers ({why})"
    return f"backward from layer {lowest}{of} (layers below it keep no activations)"


def selection_names(sel: Selection) -> list[str]:
    """The modules a selection trains, its extras included (a tied head as the embeddings it shares)."""
    extras = [pattern_module(p) or p for p in sel.extras]
    if sel.rule.get("lm_head_tied") and "lm_head" in extras:
        extras.append("model.embed_tokens")
    return list(sel.modules) + extras


def _is_embedding(name: str) -> bool:
    from .backward import embeddings_train

    return embeddings_train([name])
