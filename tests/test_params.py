import dataclasses

from helpers_report import synthetic_scan
from spectrum_llm.params import count_params, part_params, trainable_by_type
from spectrum_llm.results import ModuleScore, ScanResult


def test_trainable_by_type_counts_parameters_and_selected_norm_types():
    scan = synthetic_scan()
    rows, unit = trainable_by_type(scan, ["model.layers.0.self_attn.q_proj", "model.layers.1.input_layernorm"])
    by_type = {t: (a, b) for t, a, b in rows}
    assert unit == "parameters"
    assert by_type["self_attn.q_proj"] == (256, 3 * 256)
    assert by_type["input_layernorm"] == (16, 3 * 16)
    assert by_type["mlp.experts.down_proj"] == (0, 12 * 512)


def test_trainable_by_type_counts_a_fused_projection_once():
    whole = ModuleScore(
        name="model.layers.0.self_attn.qkv_proj", type="self_attn.qkv_proj", layer=0, shape=[48, 16], snr=1.0, numel=768
    )
    parts = [
        ModuleScore(
            name=f"model.layers.0.self_attn.qkv_proj.{p}",
            type=f"self_attn.qkv_proj.{p}",
            layer=0,
            shape=[16, 16],
            snr=1.0,
            part=p,
            rows=[16 * i, 16 * (i + 1)],
            numel=256,
        )
        for i, p in enumerate("qkv")
    ]
    scan = ScanResult("fused", "mp", [whole, *parts])
    rows, _ = trainable_by_type(scan, ["model.layers.0.self_attn.qkv_proj.q"])
    assert sum(r[2] for r in rows) == 768 and sum(r[1] for r in rows) == 256
    rows, _ = trainable_by_type(scan, ["model.layers.0.self_attn.qkv_proj"])
    assert [(t, a, b) for t, a, b in rows] == [("self_attn.qkv_proj", 768, 768)]


def test_count_params_counts_a_tied_tensor_once_and_filters_by_name():
    import torch

    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    model[0].weight.requires_grad_(False)
    assert count_params(model) == (0, 40)
    model.append(torch.nn.Linear(4, 3))
    assert count_params(model) == (15, 55)
    assert count_params(model, lambda name, p: name.endswith("bias")) == (3, 3)


def test_part_params_counts_the_kept_rows_of_a_tensor():
    assert part_params(12 * 8, 3, 12) == 24
    assert part_params(0, 0, 0) == 0


def test_scan_param_count_counts_a_whole_module_with_its_bias_and_none_without_shapes():
    from spectrum_llm.params import scan_param_count

    weight = ModuleScore(
        name="model.layers.0.mlp.down_proj",
        type="mlp.down_proj",
        layer=0,
        shape=[4, 8],
        snr=1.0,
        param="model.layers.0.mlp.down_proj.weight",
        numel=32,
    )
    bias = ModuleScore(
        name="model.layers.0.mlp.down_proj.bias",
        type="mlp.down_proj.bias",
        layer=0,
        shape=[4],
        snr=None,
        kind="bias",
        param="model.layers.0.mlp.down_proj.bias",
        numel=4,
    )
    other = ModuleScore(
        name="model.layers.0.mlp.up_proj",
        type="mlp.up_proj",
        layer=0,
        shape=[8, 4],
        snr=1.0,
        param="model.layers.0.mlp.up_proj.weight",
        numel=32,
    )
    scan = ScanResult("m", "mp", [weight, bias, other])
    assert scan_param_count(scan, [weight.name]) == (36, 68)
    assert scan_param_count(scan, []) == (0, 68)
    unknown = ScanResult("m", "mp", [dataclasses.replace(other, numel=0), weight])
    assert scan_param_count(unknown, [weight.name]) == (None, None)
