"""fp8 (block-scaled, compressed-tensors) and MXFP4 checkpoints: dequantized exactly as transformers does,
scanned like the same weights in fp32, scales never listed, selection/freeze/report working on them."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import spectrum_llm
from helpers_quantized import (
    fp8_block_llama,
    fp8_block_quantize,
    fp8_channel_llama,
    gpt_oss_config,
    gpt_oss_weights,
    llama_config,
    llama_weights,
    mxfp4_gpt_oss,
    mxfp4_quantize,
    save_reference,
)
from spectrum_llm.checkpoint import open_checkpoint
from spectrum_llm.quantized import (
    Float8Grid,
    MXFP4Blocks,
    QuantizedTensor,
    dequantize_fp8,
    dequantize_mxfp4,
    e2m1_values,
)


def _fp8(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 60).to(torch.float8_e4m3fn)


# ---- values, against transformers' own dequantizers --------------------------------------------------------


@pytest.mark.parametrize("shape", [(576, 1000), (192, 576), (130, 129), (7, 300)])
def test_fp8_block_with_partial_edge_blocks_matches_transformers(shape):
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    q = _fp8(shape)
    s = torch.rand(math.ceil(shape[0] / 128), math.ceil(shape[1] / 128)) + 1e-3
    assert torch.equal(dequantize_fp8(q, s, (128, 128)), _dequantize_fp8_weight(q, s, [128, 128], torch.float32))


def test_fp8_block_divisible_matches_transformers_loader_op():
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    q, s = _fp8((512, 768)), torch.rand(4, 6) + 1e-3
    ref = Fp8Dequantize(None)._dequantize_one(q, s, output_dtype=torch.float32)
    assert torch.equal(dequantize_fp8(q, s, (128, 128)), ref)


@pytest.mark.parametrize(
    "scale_shape,block", [((), (96, 200)), ((1,), (96, 200)), ((96, 1), (1, 200)), ((96, 5), (1, 40))]
)
def test_fp8_tensor_channel_group_scales_are_the_broadcast_product(scale_shape, block):
    q = _fp8((96, 200))
    s = (torch.rand(scale_shape) + 0.01).to(torch.bfloat16)
    grid = s.float().reshape(math.ceil(96 / block[0]), math.ceil(200 / block[1]))
    ref = q.float() * grid.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    assert torch.equal(dequantize_fp8(q, s, block), ref)


def test_e2m1_table_is_the_ocp_fp4_code_table():
    from transformers.integrations.mxfp4 import FP4_VALUES

    assert e2m1_values().tolist() == FP4_VALUES
    assert [math.copysign(1, v) for v in e2m1_values().tolist()] == [math.copysign(1, v) for v in FP4_VALUES]


def test_mxfp4_matches_convert_moe_packed_tensors_including_extreme_exponents():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 96, 5, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(100, 150, (3, 96, 5), dtype=torch.uint8, generator=g)
    scales[0, 0, :3] = torch.tensor([0, 1, 254], dtype=torch.uint8)
    ours, ref = dequantize_mxfp4(blocks, scales), convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    assert ours.shape == ref.shape == (3, 160, 96)
    assert torch.equal(ours, ref)


def test_synthetic_checkpoints_load_in_transformers_to_our_values(tmp_path):
    """Our builders follow the layouts: transformers' own loader dequantizes them to what we read."""
    from transformers import AutoModelForCausalLM

    cfg = llama_config(hidden=512, intermediate=1024, heads=8, kv_heads=2, layers=1)
    fp8_dir, _ = fp8_block_llama(tmp_path / "fp8", llama_weights(cfg), cfg)
    oss_cfg = gpt_oss_config()
    oss_dir, _ = mxfp4_gpt_oss(tmp_path / "oss", gpt_oss_weights(oss_cfg), oss_cfg)
    for folder in (fp8_dir, oss_dir):
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
        ckpt = open_checkpoint(folder)
        checked = 0
        for info in ckpt.tensors:
            if info.dequantizable:
                assert torch.equal(ckpt.load(info).materialize(), loaded[info.name])
                checked += 1
        assert checked >= 2


# ---- the lazy tensor ----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 200), st.integers(0, 200), st.booleans())
def test_lazy_views_equal_slices_of_the_whole(a, b, c, d, transpose):
    q, s = _fp8((300, 200), seed=1), torch.rand(3, 2) + 0.1
    lazy = QuantizedTensor(Float8Grid(q, s, (128, 128)), (300, 200))
    whole = dequantize_fp8(q, s, (128, 128))
    if transpose:
        lazy, whole = lazy.T, whole.T
    assert torch.equal(lazy[a:b].materialize(), whole[a:b])
    assert torch.equal(lazy[:, c:d].to(torch.float64), whole[:, c:d].double())
    assert torch.equal(lazy[a:b, c:d].T.materialize(), whole[a:b, c:d].T)


def test_lazy_tensor_acts_as_a_float32_tensor():
    blocks, scales = mxfp4_quantize(torch.randn(2, 64, 96))
    lazy = QuantizedTensor(MXFP4Blocks(blocks, scales), (2, 96, 64), transposed=True)
    whole = dequantize_mxfp4(blocks, scales)
    assert lazy.shape == whole.shape and lazy.ndim == 3 and lazy.dtype == torch.float32
    assert torch.equal(lazy[1].materialize(), whole[1]) and torch.equal(
        lazy[-1][3:9, 40:].materialize(), whole[1, 3:9, 40:]
    )
    assert torch.equal(torch.isfinite(lazy), torch.isfinite(whole))
    assert torch.equal(torch.stack([lazy[0], lazy[1]]), whole)  # any torch function sees the values
    assert lazy[0].sum().item() == whole[0].sum().item() and lazy.narrow(1, 2, 5).shape == (2, 5, 96)


# ---- scanning the three layouts -----------------------------------------------------------------------------


def _llama_fp8(tmp):
    cfg = llama_config()
    return fp8_block_llama(tmp / "fp8-block", llama_weights(cfg), cfg)


def _llama_channel(tmp):
    cfg = llama_config(layers=1)
    return fp8_channel_llama(tmp / "fp8-channel", llama_weights(cfg, seed=3), cfg)


def _gpt_oss(tmp):
    cfg = gpt_oss_config()
    return mxfp4_gpt_oss(tmp / "mxfp4", gpt_oss_weights(cfg), cfg)


LAYOUTS = {
    "fp8-block": (_llama_fp8, "F8_E4M3", "fp8 block 128x128"),
    "fp8-channel": (_llama_channel, "F8_E4M3", "fp8 per-channel"),
    "mxfp4": (_gpt_oss, "MXFP4", "mxfp4"),
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request, tmp_path_factory):
    """One checkpoint per layout, the same weights dequantized into fp32, and both scanned once (mp)."""
    build, dtype, label = LAYOUTS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    folder, reference = build(tmp)
    fp32 = save_reference(tmp / "fp32", reference, json.loads((folder / "config.json").read_text()))
    scans = {"mp": (spectrum_llm.scan(folder, output=tmp / "scan.json"), spectrum_llm.scan(fp32))}
    return dict(
        name=request.param, folder=folder, fp32=fp32, dtype=dtype, label=label, scans=scans, scan_file=tmp / "scan.json"
    )


@pytest.mark.parametrize("estimator", ["mp", "reference"])
def test_scores_match_the_fp32_scan_of_the_same_weights(layout, estimator):
    if estimator not in layout["scans"]:
        layout["scans"][estimator] = tuple(
            spectrum_llm.scan(layout[k], estimator=estimator) for k in ("folder", "fp32")
        )
    quant, plain = ({m.name: m for m in r.modules} for r in layout["scans"][estimator])
    assert sorted(quant) == sorted(plain)
    scored = [n for n, m in plain.items() if m.ranked]
    assert len(scored) >= 8
    for n in scored:
        assert quant[n].ranked and quant[n].snr == pytest.approx(plain[n].snr, rel=1e-6)
        assert quant[n].shape == plain[n].shape and quant[n].param == plain[n].param


def test_scales_are_attached_never_modules(layout):
    ckpt = open_checkpoint(layout["folder"])
    assert not [t.name for t in ckpt.tensors if "scale" in t.name or t.name.endswith("_blocks")]
    assert all(t.scales for t in ckpt.tensors if t.dequantizable)
    mods = layout["scans"]["mp"][0].modules
    assert not [m.name for m in mods if "scale" in m.name or "_blocks" in m.name]


def test_scan_file_records_stored_dtype_and_dequantization(layout):
    name, dtype, label = layout["name"], layout["dtype"], layout["label"]
    data = json.loads(layout["scan_file"].read_text())
    deq = [m for m in data["modules"] if m.get("dequantized")]
    assert deq and all(m["dtype"] == dtype and m["dequantized"] == label for m in deq)
    assert all(m["dtype"] == "BF16" and "dequantized" not in m for m in data["modules"] if "embed" in m["name"])
    assert data["config"]["quantization"]
    if name == "mxfp4":
        experts = [m for m in deq if m["param"].endswith("experts.gate_up_proj")]
        assert [m["rows"] for m in experts] == [[e, e + 1] for e in range(4)]
        assert experts[0]["name"] == "model.layers.0.mlp.experts.0.gate_up_proj" and experts[0]["shape"] == [320, 448]


def test_a_scan_dequantizes_one_block_at_a_time(layout, monkeypatch):
    from spectrum_llm import spectra

    monkeypatch.setattr(spectra, "BLOCK_BYTES", 2**16)  # Gram blocks of 8192 values
    largest = []
    real = QuantizedTensor._map

    def record(self, fn, dtype):
        if dtype != torch.bool:  # torch.isfinite's mask, computed a chunk at a time
            largest.append(self.numel())
        return real(self, fn, dtype)

    monkeypatch.setattr(QuantizedTensor, "_map", record)
    assert len(spectrum_llm.scan(layout["folder"], modules=r"layers\.0\.").ranked()) >= 6
    assert largest and max(largest) <= 8192


def test_select_freeze_and_report_on_a_quantized_scan(layout, tmp_path):
    from spectrum_llm.freezing import freeze
    from spectrum_llm.html_report import report
    from spectrum_llm.models import load_meta_model
    from spectrum_llm.tables import scan_table

    name, folder, dtype = layout["name"], layout["folder"], layout["dtype"]
    scan = layout["scans"]["mp"][0]
    sel = spectrum_llm.select(layout["scan_file"], top_percent=50)
    model = load_meta_model(folder)
    summary = freeze(model, sel)
    assert 0 < summary.trainable_params < summary.total_params
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any("scale" in n or "blocks" in n for n in trainable)
    if name == "mxfp4":
        assert (
            "model.layers.0.mlp.experts.gate_up_proj" in summary.partial
            or "model.layers.0.mlp.experts.down_proj" in summary.partial
        )
    html = report(scan, selection=sel, output=tmp_path / "r.html").html.read_text()
    assert "dequantized to float32 from" in html
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(scan_table(scan))
    assert f"{dtype}, dequantized" in console.export_text()


def test_module_spectrum_reads_a_quantized_module(tmp_path):
    from spectrum_llm.html_report import module_spectrum

    folder, reference = _gpt_oss(tmp_path)
    scan = spectrum_llm.scan(folder)
    sp = module_spectrum(scan, "model.layers.0.mlp.experts.2.down_proj", folder)
    w = reference["model.layers.0.mlp.experts.down_proj"][2]
    assert sp.shape == tuple(w.shape)
    assert sp.values[0] == pytest.approx(float(torch.linalg.svdvals(w.double())[0]), rel=1e-9)


# ---- formats we cannot read ---------------------------------------------------------------------------------


def test_gptq_weights_are_skipped_naming_the_method_and_fix(tmp_path):
    g = torch.Generator().manual_seed(0)
    w = {
        "model.layers.0.mlp.down_proj.weight": torch.randn(24, 40, generator=g),
        "model.layers.0.self_attn.q_proj.qweight": torch.randint(0, 2**31 - 1, (8, 64), dtype=torch.int32),
        "model.layers.0.self_attn.q_proj.qzeros": torch.zeros(1, 8, dtype=torch.int32),
        "model.layers.0.self_attn.q_proj.scales": torch.ones(1, 64, dtype=torch.float16),
        "model.layers.0.self_attn.q_proj.g_idx": torch.zeros(64, dtype=torch.int32),
    }
    save_file(w, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 64}}
        )
    )
    mods = {m.name: m for m in spectrum_llm.scan(tmp_path).modules}
    assert set(mods) == {"model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"}
    why = mods["model.layers.0.self_attn.q_proj"].skipped
    assert "GPTQ 4-bit" in why and "unquantized" in why and mods["model.layers.0.mlp.down_proj"].ranked


def test_bitsandbytes_4bit_points_to_dequantize(tmp_path):
    w = {
        "model.layers.0.mlp.up_proj.weight": torch.randint(0, 255, (512, 1), dtype=torch.uint8),
        "model.layers.0.mlp.up_proj.weight.absmax": torch.ones(16),
        "model.layers.0.mlp.up_proj.weight.quant_map": torch.ones(16),
        "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4": torch.zeros(40, dtype=torch.uint8),
    }
    save_file(w, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(
        json.dumps({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}})
    )
    mods = spectrum_llm.scan(tmp_path).modules
    assert [m.name for m in mods] == ["model.layers.0.mlp.up_proj"]
    assert "bitsandbytes 4-bit" in mods[0].skipped and "model.dequantize()" in mods[0].skipped


def test_fp8_scale_grid_that_does_not_tile_the_weight_is_skipped(tmp_path):
    q, _ = fp8_block_quantize(torch.randn(300, 260))
    save_file(
        {"model.layers.0.mlp.up_proj.weight": q, "model.layers.0.mlp.up_proj.weight_scale_inv": torch.ones(4, 3)},
        tmp_path / "model.safetensors",
    )
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8"}}))
    [m] = spectrum_llm.scan(tmp_path).modules
    assert "does not tile" in m.skipped and "bf16" in m.skipped


def test_compressed_tensors_block_strategy_takes_its_block_from_the_config(tmp_path):
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    q, s = fp8_block_quantize(torch.randn(300, 260), (64, 128))
    save_file(
        {"model.layers.0.mlp.up_proj.weight": q, "model.layers.0.mlp.up_proj.weight_scale": s.bfloat16()},
        tmp_path / "model.safetensors",
    )
    weights = {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [64, 128]}
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "quantization_config": {
                    "quant_method": "compressed-tensors",
                    "format": "float-quantized",
                    "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}},
                }
            }
        )
    )
    ckpt = open_checkpoint(tmp_path)
    [info] = ckpt.tensors
    assert info.scheme.label == "fp8 block 64x128" and info.dequantizable
    ref = _dequantize_fp8_weight(q, s.bfloat16(), [64, 128], torch.float32)
    assert torch.equal(ckpt.load(info).materialize(), ref)


def test_e8m0_scales_as_bytes_or_float8_e8m0fnu_are_powers_of_two():
    q = _fp8((256, 256))
    exps = torch.tensor([[120, 127], [128, 135]], dtype=torch.uint8)
    ref = q.float() * torch.exp2(exps.float() - 127).repeat_interleave(128, 0).repeat_interleave(128, 1)
    assert torch.equal(dequantize_fp8(q, exps, (128, 128)), ref)
    assert torch.equal(dequantize_fp8(q, exps.view(torch.float8_e8m0fnu), (128, 128)), ref)
