"""GGUF export: the file's blocks decode (with the gguf package) to the simulated weights, the
metadata is what llama.cpp needs, and llama.cpp itself computes the simulated logits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import quantbalance as qb
from quantbalance.formats.ggml import GGML_SCHEMES, ggml_type_name

gguf = pytest.importorskip("gguf", reason="needs the PyPI package gguf")
pytest.importorskip("transformers")

from tiny_llama import make_tiny_llama, token_batch  # noqa: E402

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None
MIXED = {
    "model.layers.0.mlp.down_proj": qb.LayerSpec(weight=GGML_SCHEMES["Q8_0"]),
    "model.layers.1.mlp.down_proj": qb.LayerSpec(weight=GGML_SCHEMES["Q4_1"]),
    "model.layers.1.mlp.up_proj": qb.LayerSpec(weight=GGML_SCHEMES["Q5_1"]),
    "re:.*mlp.*": qb.LayerSpec(weight=GGML_SCHEMES["Q5_0"]),
    "re:.*": qb.LayerSpec(weight=GGML_SCHEMES["Q4_0"]),
}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    folder = tmp_path_factory.mktemp("tiny-llama")
    return make_tiny_llama(folder), folder


def _plan(layers: dict[str, qb.LayerSpec]) -> qb.Plan:
    return qb.Plan(layers=layers, skip=["re:(.*\\.)?lm_head"], layer_types=["Linear", "Embedding"])


def _unpermute(w: np.ndarray, name: str, cfg) -> np.ndarray:  # type: ignore[no-untyped-def]
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    for key, h in heads.items():
        if f".{key}." in name:
            n = w.shape[0]
            return w.reshape(h, n // h // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return w


def test_ggml_scheme_mapping() -> None:
    for name, scheme in GGML_SCHEMES.items():
        assert ggml_type_name(scheme, (8, 64)) == name
        assert ggml_type_name(scheme, (8, 48)) is None  # rows must be whole blocks
    assert ggml_type_name(qb.Scheme(8), (8, 64)) is None  # per channel
    assert ggml_type_name(qb.Scheme(8, granularity=qb.PerGroup(size=32)), (8, 64)) is None  # fp32
    assert ggml_type_name(GGML_SCHEMES["Q4_0"].model_copy(update={"signed": False}), (2, 32))


def test_blocks_decode_to_the_simulated_weights(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, src = llama
    q = qb.quantize(model, _plan(MIXED), progress=False)
    res = qb.export(q, tmp_path / "m.gguf", format="gguf", source=src)
    assert res.layers["model.layers.0.mlp.down_proj"] == "Q8_0"
    assert res.layers["model.layers.1.mlp.up_proj"] == "Q5_1"
    assert res.layers["model.embed_tokens"] == "Q4_0"
    reader = gguf.GGUFReader(str(res.path))
    tensors = {t.name: t for t in reader.tensors}
    cfg = model.config
    names = {"model.embed_tokens": "token_embd", "model.layers.0.mlp.down_proj": "blk.0.ffn_down",
             "model.layers.1.self_attn.q_proj": "blk.1.attn_q",
             "model.layers.0.self_attn.k_proj": "blk.0.attn_k",
             "model.layers.1.mlp.up_proj": "blk.1.ffn_up",
             "model.layers.1.mlp.down_proj": "blk.1.ffn_down"}  # fmt: skip
    mods = dict(q.named_modules())
    for hf, gg in names.items():
        t = tensors[f"{gg}.weight"]
        assert t.tensor_type.name == res.layers[hf]
        got = _unpermute(gguf.quants.dequantize(t.data, t.tensor_type), t.name, cfg)
        want = mods[hf].weight.numpy()
        assert got.shape == want.shape
        if t.tensor_type.name.endswith("_0"):
            assert np.array_equal(got, want), hf
        else:  # block minimum rounded to fp16
            assert 0 < np.abs(got - want).max() <= 2.0**-10 * np.abs(want).max(), hf
    out = tensors["output.weight"]  # quantizing the embedding untied the float head
    assert out.tensor_type.name == "F32"
    assert np.array_equal(out.data, q.lm_head.weight.detach().numpy())
    norm = tensors["blk.1.attn_norm.weight"]
    assert np.array_equal(norm.data, q.model.layers[1].input_layernorm.weight.detach().numpy())
    assert sum(n.startswith("model.") for n in res.notes) == 2  # the _1 layers say how close


def test_metadata_for_llama_cpp(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, src = llama
    q = qb.quantize(
        model, _plan({"re:.*": qb.LayerSpec(weight=GGML_SCHEMES["Q8_0"])}), progress=False
    )
    res = qb.export(q, tmp_path / "m.gguf", format="gguf", source=src, float_type="f16")
    f = gguf.GGUFReader(str(res.path)).fields
    cfg = model.config
    want = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
            "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16,
            "llama.context_length": 128, "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "default", "general.file_type": 7,
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 0}  # fmt: skip
    for key, value in want.items():
        assert f[key].contents() == value, key
    assert f["llama.rope.freq_base"].contents() == pytest.approx(10000.0)
    assert f["llama.attention.layer_norm_rms_epsilon"].contents() == pytest.approx(1e-5)
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == cfg.vocab_size and tokens[0] == "<|endoftext|>"
    assert f["tokenizer.ggml.token_type"].contents()[:2] == [3, 3]  # control tokens
    assert len(f["tokenizer.ggml.merges"].contents()) > 0
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(res.path)).tensors}
    assert types["output.weight"] == "F16" and types["output_norm.weight"] == "F32"
    assert any("F16" in n for n in res.notes)
    lines = (tmp_path / "m.tensor-types.txt").read_text().splitlines()
    assert "blk\\.1\\.ffn_up\\.weight=q8_0" in lines and "output\\.weight=f16" in lines


def test_refusals_name_the_layer(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, src = llama
    plan = _plan({"model.layers.1.self_attn.v_proj": qb.LayerSpec(weight=qb.Scheme(8)),
                  "re:.*": qb.LayerSpec(weight=GGML_SCHEMES["Q4_0"])})  # fmt: skip
    q = qb.quantize(model, plan, progress=False)
    with pytest.raises(qb.UnsupportedError, match=r"model.layers.1.self_attn.v_proj: int8-per-ch"):
        qb.export(q, tmp_path / "m.gguf", format="gguf", source=src)
    assert not (tmp_path / "m.gguf").exists()
    with pytest.raises(qb.ConfigError, match=r"tokenizer\.json"):
        qb.export(q, tmp_path / "m.gguf", format="gguf")
    res = qb.export(q, tmp_path / "m.gguf", format="gguf", source=src, fallback="float")
    assert res.layers["model.layers.1.self_attn.v_proj"] == "F32"
    assert any("stored as F32" in n for n in res.notes)
    net = qb.quantize(torch.nn.Sequential(torch.nn.Linear(32, 32)), "int8-weight", progress=False)
    with pytest.raises(qb.UnsupportedError, match=r"no `\.config`"):
        qb.export(net, tmp_path / "x.gguf", format="gguf", source=src)


def _llama_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=1, verbose=False)
    toks = ids[0].tolist()
    llm.eval(toks)
    return torch.tensor(np.array(llm.scores[: len(toks)]))


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="needs the PyPI package llama-cpp-python")
def test_llama_cpp_computes_the_simulation(llama, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, src = llama
    ids = token_batch(model.config.vocab_size, n=1, length=48)
    q = qb.quantize(model, _plan(MIXED), progress=False)
    res = qb.export(q, tmp_path / "m.gguf", format="gguf", source=src)
    with torch.no_grad():
        sim = F.log_softmax(q(ids).logits[0], -1)
        flt = F.log_softmax(model(ids).logits[0], -1)
    cpp = F.log_softmax(_llama_logits(res.path, ids), -1)

    def kl(p: torch.Tensor, r: torch.Tensor) -> float:
        return float(F.kl_div(r, p, log_target=True, reduction="none").sum(-1).mean())

    assert kl(sim, cpp) <= 1e-5  # only llama.cpp's 8-bit activation blocks differ
    assert kl(sim, cpp) < kl(flt, sim) / 20  # far below the quantization's own effect


def test_cli_exports_gguf_and_compressed_tensors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from quantbalance.cli.main import app

    plan = _plan({"re:.*": qb.LayerSpec(weight=GGML_SCHEMES["Q4_0"])}).save(tmp_path / "plan.json")
    for fmt, out in (("gguf", tmp_path / "m.gguf"), ("compressed-tensors", tmp_path / "ct")):
        args = ["export", "--format", fmt, "--plan", str(plan), "--model",
                "export_factories:tiny_llama", "--out", str(out)]  # fmt: skip
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        summary = json.loads((tmp_path / f"{out.name}.export.json").read_text())
        assert len(summary["layers"]) == 15 and summary["nbytes"] > 0
    assert set(json.loads((tmp_path / "m.gguf.export.json").read_text())["layers"].values()) == {
        "Q4_0"
    }
    assert (tmp_path / "ct" / "tokenizer.json").is_file()
