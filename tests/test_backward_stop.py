"""The backward pass stops at the lowest trained layer when the embeddings and the layers below it are frozen:
no gradient and no saved activation below it, directly and through `train` (with and without gradient
checkpointing), and the trained weights equal those of a run that forces input gradients (the same math)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers_models import build_tiny_llama, write_cpt_data
from spectrum_llm.backward import lowest_layer, lowest_trained_layer
from spectrum_llm.freezing import freeze
from spectrum_llm.selection_text import backward_text
from spectrum_llm.training import TrainConfig, train

LAYERS = 4
TOP = ["^model.layers.2.mlp.down_proj.weight$", "^model.layers.3.self_attn.q_proj.weight$", "^model.norm.weight$"]


class LayerProbe:
    """Per layer: whether its output required grad, and how many tensors autograd saved while it ran."""

    def __init__(self, model):
        self.grad_out: dict[int, bool] = {}
        self.saved: dict[int, int] = {i: 0 for i in range(LAYERS)}
        self.current: int | None = None
        self.handles = []
        for i, layer in enumerate(model.model.layers):
            self.handles.append(layer.register_forward_pre_hook(self._enter(i)))
            self.handles.append(layer.register_forward_hook(self._leave(i)))

    def _enter(self, i):
        def hook(module, args):
            self.current = i

        return hook

    def _leave(self, i):
        def hook(module, args, out):
            self.grad_out[i] = bool(out.requires_grad)
            self.current = None

        return hook

    def pack(self, t):
        if self.current is not None:
            self.saved[self.current] += 1
        return t


def _tiny(tmp_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(build_tiny_llama(tmp_path / "m", dtype="float32", layers=LAYERS))


def test_frozen_prefix_gets_no_gradient_and_keeps_no_activation(tmp_path):
    model = _tiny(tmp_path)
    summary = freeze(model, TOP)
    assert not summary.input_require_grads and lowest_trained_layer(model) == 2
    probe = LayerProbe(model)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.autograd.graph.saved_tensors_hooks(probe.pack, lambda t: t):
        model(input_ids=x, labels=x).loss.backward()
    assert probe.grad_out == {0: False, 1: False, 2: True, 3: True}
    assert probe.saved[0] == probe.saved[1] == 0 and probe.saved[2] > 0 and probe.saved[3] > 0
    assert all(p.grad is None for n, p in model.named_parameters() if ".layers.0." in n or ".layers.1." in n)
    assert model.model.layers[2].mlp.down_proj.weight.grad is not None


def test_input_grads_on_request_cross_the_whole_network(tmp_path):
    model = _tiny(tmp_path)
    assert freeze(model, TOP, input_require_grads=True).input_require_grads
    probe = LayerProbe(model)
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    model(input_ids=x, labels=x)
    assert probe.grad_out[0] and probe.grad_out[1]


def test_backward_text_names_the_stop():
    assert lowest_layer(["model.layers.23.mlp.up_proj", "lm_head"]) == 23
    assert backward_text(["model.layers.23.mlp.up_proj", "lm_head"], 30).startswith("backward from layer 23 of 30")
    assert backward_text(["model.embed_tokens", "model.layers.29.mlp.up_proj"], 30) == (
        "backward through all 30 layers (the embeddings train)"
    )


class TrainProbe(TrainerCallback):
    """Installs a LayerProbe when training begins (after the backward-stop callback has run)."""

    def __init__(self):
        self.probe = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.probe = LayerProbe(model)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("bstop")
    (root / "sel.txt").write_text("\n".join(TOP) + "\n")
    return {
        "root": root,
        "model": build_tiny_llama(root / "m", dtype="float32", layers=LAYERS),
        "data": write_cpt_data(root / "cpt.jsonl"),
        "sel": root / "sel.txt",
    }


def _train(work, name, callbacks=None, **kw):
    out = work["root"] / name
    cfg = TrainConfig(
        model=str(work["model"]),
        data=str(work["data"]),
        output_dir=str(out),
        seq_len=16,
        batch_size=2,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        save_steps=100,
        lr_scheduler="constant",
        selection=str(work["sel"]),
        progress=False,
        **kw,
    )
    return train(cfg, callbacks=callbacks), out


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_train_stops_the_backward_pass(work, checkpointing):
    cb = TrainProbe()
    _train(work, f"run-{checkpointing}", [cb], gradient_checkpointing=checkpointing)
    assert cb.probe.grad_out[0] is False and cb.probe.grad_out[1] is False and cb.probe.grad_out[3] is True


class ForceInputGrads(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kw):
        model.enable_input_require_grads()


@pytest.mark.slow
def test_stopping_early_trains_the_same_weights(work):
    _, short = _train(work, "short")
    _, long = _train(work, "long", [ForceInputGrads()])
    a, b = load_file(str(short / "model.safetensors")), load_file(str(long / "model.safetensors"))
    w = "model.layers.2.mlp.down_proj.weight"
    assert not torch.equal(a[w], load_file(str(work["model"] / "model.safetensors"))[w])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
