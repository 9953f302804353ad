"""What `spectrum select` says under a selection: the study's advice follows the rule that made it."""

from types import SimpleNamespace

import pytest

from spectrum_llm.selection_text import EVIDENCE, evidence_note


@pytest.mark.parametrize("rule", ["per-type", "global", "budget"])
def test_score_ranked_picks_carry_the_studys_advice(rule):
    assert evidence_note(SimpleNamespace(rule={"rule": rule})) == EVIDENCE
    assert "docs/evidence.md" in EVIDENCE and "--random --match" in EVIDENCE
    assert "Recommended for SFT: --rule top-layers" in EVIDENCE
    assert "For continued pretraining train LoRA" in EVIDENCE
    assert "--rule top-layers trained at --lr 3e-4" in EVIDENCE


@pytest.mark.parametrize("rule", ["random", "top-layers", "top-layers-per-type", None])
def test_picks_not_ranked_by_a_score_carry_none(rule):
    assert evidence_note(SimpleNamespace(rule={"rule": rule})) is None


def test_the_advice_fits_80_columns():
    plain = EVIDENCE.replace("[dim]", "").replace("[/]", "")
    assert all(len(line) <= 80 for line in plain.splitlines())
