"""compressed-tensors export: Transformers loads the folder and computes what quantbalance
simulated (tiny random Llama; the SmolLM2 check is bench/bench_exports.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import quantbalance as qb
from quantbalance.exports.ct_schemes import NoFormError

pytest.importorskip("compressed_tensors", reason="needs the PyPI package compressed-tensors")
transformers = pytest.importorskip("transformers")

from tiny_llama import make_tiny_llama, token_batch  # noqa: E402

G32 = qb.PerGroup(size=32)
SPECS = {
    "int8": qb.LayerSpec(weight=qb.Scheme(8)),
    "int4-g32": qb.LayerSpec(weight=qb.Scheme(4, granularity=G32)),
    "uint4-g32-asym": qb.LayerSpec(
        weight=qb.Scheme(4, symmetric=False, signed=False, granularity=G32)
    ),
    "int3-g32-asym": qb.LayerSpec(weight=qb.Scheme(3, symmetric=False, granularity=G32)),
    "fp8": qb.LayerSpec(weight=qb.Scheme(8, kind="fp8_e4m3")),
    "w8a8-dynamic": qb.preset("w8a8-dynamic").layers["re:.*"],
    "w8a8": qb.preset("w8a8").layers["re:.*"],
}  # fmt: skip


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, torch.Tensor]:
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_llama(folder)
    return model, folder, token_batch(model.config.vocab_size)


def _plan(spec: qb.LayerSpec, embeddings: bool = False, **layers: qb.LayerSpec) -> qb.Plan:
    types = ["Linear", "Embedding"] if embeddings else ["Linear"]
    return qb.Plan(layers={**layers, "re:.*": spec}, skip=["re:(.*\\.)?lm_head"], layer_types=types)


def _kl(q: torch.nn.Module, hf: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        a = F.log_softmax(q(ids).logits.float(), -1)
        b = F.log_softmax(hf(ids).logits.float(), -1)
    return float(F.kl_div(b, a, log_target=True, reduction="none").sum(-1).mean())


def _load(folder: Path, dequantize: bool = False) -> torch.nn.Module:
    kw = {}
    if dequantize:
        kw["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=True)
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, **kw
    ).eval()


@pytest.mark.parametrize("name", list(SPECS))
def test_transformers_matches_simulation(llama, tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    model, src, ids = llama
    q = qb.quantize(model, _plan(SPECS[name]), calib_data=[{"input_ids": ids}], progress=False)
    res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src)
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["quantization_status"] == "compressed"
    assert len(qc["config_groups"]) == 1 and "lm_head" in qc["ignore"]
    (group,) = qc["config_groups"].values()
    assert len(group["targets"]) == 14 and group["format"] == qc["format"]
    assert {"tokenizer.json", "model.safetensors", "quantbalance_plan.json"} <= set(res.files)
    asym = not SPECS[name].weight.symmetric  # type: ignore[union-attr]
    assert bool(res.notes) == asym
    kl = _kl(q, _load(tmp_path / "ct", dequantize=asym), ids)
    assert kl <= 1e-6, kl


def test_formats_follow_the_scheme(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, src, ids = llama
    mixed = _plan(SPECS["int4-g32"], **{"model.layers.1.mlp.down_proj": SPECS["int8"],
                                        "model.layers.0.mlp.up_proj": SPECS["fp8"]})  # fmt: skip
    q = qb.quantize(model, mixed, calib_data=[{"input_ids": ids}], progress=False)
    res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src)
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    groups = {
        g["format"] + f"/{g['weights']['num_bits']}": g["targets"]
        for g in qc["config_groups"].values()
    }
    assert groups["naive-quantized/8"] == ["model.layers.0.mlp.up_proj"]
    assert groups["pack-quantized/8"] == ["model.layers.1.mlp.down_proj"]
    assert len(groups["pack-quantized/4"]) == 12
    assert res.layers["model.layers.0.mlp.up_proj"] == "naive-quantized"
    # 4-bit codes are packed: the folder's weights are far below the int8 export's
    int8 = qb.quantize(model, _plan(SPECS["int8"]), progress=False)
    big = qb.export(int8, tmp_path / "ct8", format="compressed-tensors", source=src)
    assert res.files["model.safetensors"] < big.files["model.safetensors"]
    assert _kl(q, _load(tmp_path / "ct"), ids) <= 1e-6


def test_quantized_embeddings_untie_the_head(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, src, ids = llama
    q = qb.quantize(model, _plan(SPECS["int8"], embeddings=True), progress=False)
    res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src)
    cfg = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and "embeddings" in res.notes[0]
    assert _kl(q, _load(tmp_path / "ct", dequantize=True), ids) <= 1e-6


def test_mixed_folders_transformers_cannot_load_are_said_loudly(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, src, ids = llama
    plan = _plan(
        SPECS["int8"], embeddings=True, **{"model.layers.0.mlp.up_proj": SPECS["int4-g32"]}
    )
    q = qb.quantize(model, plan, progress=False)
    res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src)
    assert res.notes[0].startswith("NOT loadable exactly by Transformers")
    # the reason: dequantize=True decodes every layer with the first group's scheme
    try:
        wrong = _kl(q, _load(tmp_path / "ct", dequantize=True), ids)
    except RuntimeError as e:  # here the 4-bit layer does not even fit the 8-bit decoding
        assert "conversion of the weights" in str(e)
    else:
        assert wrong > 1e-3


def test_mixed_widths_with_quantized_embeddings_are_widened_into_one_group(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A GGML-style mix (4/5/8-bit symmetric, groups of 32, embedding quantized): one group at
    8 bits holds the same values, and Transformers loads it exactly (dequantize=True)."""
    from quantbalance.formats.ggml import GGML_SCHEMES

    model, src, ids = llama
    spec = {t: qb.LayerSpec(weight=GGML_SCHEMES[t]) for t in ("Q4_0", "Q5_0", "Q8_0")}
    plan = _plan(spec["Q4_0"], embeddings=True, **{"re:.*down_proj": spec["Q8_0"],
                                                   "re:.*up_proj": spec["Q5_0"]})  # fmt: skip
    q = qb.quantize(model, plan, progress=False)
    res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src)
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert group["weights"]["num_bits"] == 8 and group["weights"]["group_size"] == 32
    assert "model.embed_tokens" in group["targets"]
    assert res.notes[0].startswith("4/5-bit layers stored as 8-bit codes")
    assert _kl(q, _load(tmp_path / "ct", dequantize=True), ids) <= 1e-6
    mixed = qb.export(q, tmp_path / "ct-mixed", format="compressed-tensors", source=src,
                      widen=False)  # fmt: skip
    assert mixed.notes[0].startswith("NOT loadable exactly by Transformers")
    assert mixed.files["model.safetensors"] < res.files["model.safetensors"]


def test_float_layers_exact_in_half_precision_are_stored_half(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A float layer whose values bfloat16 holds is stored as bfloat16 and loads back (default
    path, default dtype) bit for bit as float32; a float layer bfloat16 cannot hold stays
    float32; the note gives the bytes the folder is below quantbalance's count."""
    from safetensors import safe_open

    model, src, ids = llama
    with torch.no_grad():  # an embedding (tied to the head) from a bfloat16 checkpoint
        emb = model.model.embed_tokens.weight
        before = emb.detach().clone()
        emb.copy_(emb.to(torch.bfloat16).float())
    try:
        keep = "model.layers.0.self_attn.k_proj"  # float, random float32 values
        plan = qb.Plan(layers={"re:.*": SPECS["int4-g32"]}, skip=["re:(.*\\.)?lm_head", keep])
        q = qb.quantize(model, plan, progress=False)
        res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src)
        with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
        assert dtypes["model.embed_tokens.weight"] == "BF16"
        assert dtypes[f"{keep}.weight"] == "F32" and "lm_head.weight" not in dtypes
        n = emb.numel() * 2
        assert res.notes == [
            "1 float layer weight(s) stored in half precision, every value exact (loaded back as "
            f"the same float32): model.embed_tokens (bfloat16); the folder is {n} bytes below "
            "quantbalance's size count, which counts float layers at float32"
        ]
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ct")).eval()
        got = hf.model.embed_tokens.weight
        assert got.dtype == torch.float32 and torch.equal(got, q.model.embed_tokens.weight)
        assert hf.lm_head.weight is got
        assert _kl(q, hf, ids) <= 1e-6
    finally:
        with torch.no_grad():
            emb.copy_(before)


def test_exact_half_only_when_every_value_survives() -> None:
    from quantbalance.exports.hf_files import exact_half

    bf = torch.tensor([1.0, -0.0, 3.140625, 2.0**100])  # bfloat16 values (2^100: no float16)
    fp16 = torch.tensor([1.0, 1.0009765625, 65504.0])  # float16, not bfloat16
    odd = torch.tensor([1.0, 1.0 + 2**-20])  # neither
    assert exact_half(bf).dtype == torch.bfloat16
    assert torch.equal(exact_half(bf).float().view(torch.int32), bf.view(torch.int32))
    assert exact_half(fp16).dtype == torch.float16 and torch.equal(exact_half(fp16).float(), fp16)
    assert exact_half(odd) is odd
    assert exact_half(bf.double()).dtype == torch.float64


@pytest.mark.parametrize(
    ("scheme", "match"),
    [
        (qb.Scheme(4, kind="nf4", granularity=G32), "nf4"),
        (qb.Scheme(4, kind="codebook", granularity=G32), "lut4"),
        (qb.Scheme(4, granularity=qb.PerGroup(size=48)), "partial group"),
        (qb.Scheme(1), "int1"),
    ],
)
def test_no_form_names_the_layer_or_falls_back(llama, tmp_path, scheme, match) -> None:  # type: ignore[no-untyped-def]
    model, src, ids = llama
    plan = _plan(SPECS["int8"], **{"model.layers.0.self_attn.k_proj": qb.LayerSpec(weight=scheme)})
    q = qb.quantize(model, plan, calib_data=[{"input_ids": ids}], progress=False)
    with pytest.raises(NoFormError, match=f"model.layers.0.self_attn.k_proj: .*{match}"):
        qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src)
    assert not (tmp_path / "ct").exists()
    res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=src, fallback="float")
    assert res.layers["model.layers.0.self_attn.k_proj"] == "float"
    assert "stored as float" in res.notes[0]
    qc = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert "model.layers.0.self_attn.k_proj" in qc["ignore"]
    assert _kl(q, _load(tmp_path / "ct"), ids) <= 1e-6


def test_refuses_non_hf_models_and_existing_folders(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = torch.nn.Sequential(torch.nn.Linear(8, 8))
    q = qb.quantize(net, "int8-weight", progress=False)
    with pytest.raises(qb.UnsupportedError, match=r"has no `\.config`"):
        qb.export(q, tmp_path / "x", format="compressed-tensors")
    model, src, _ = llama
    q = qb.quantize(model, _plan(SPECS["int8"]), progress=False)
    (tmp_path / "taken").mkdir()
    with pytest.raises(qb.ConfigError, match="exists"):
        qb.export(q, tmp_path / "taken", format="compressed-tensors", source=src)
