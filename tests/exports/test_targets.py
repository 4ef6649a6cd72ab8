"""``--target`` narrows the search to the engine's exact schemes; the chosen Plan exports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

import quantbalance as qb
from quantbalance.errors import ConfigError
from quantbalance.formats.ggml import EXACT, GGML_SCHEMES
from quantbalance.search.targets import TARGETS, target_candidates


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _opts(target: str, module: nn.Module) -> dict[str, qb.LayerSpec | None]:
    return target_candidates(target)("layer", module)


def test_candidates_per_target() -> None:
    lin576, lin48 = nn.Linear(576, 64), nn.Linear(48, 64)
    emb = nn.Embedding(100, 64)
    assert set(_opts("llama.cpp", lin576)) == {"float", "Q8_0", "Q5_0", "Q4_0"}  # bit-exact only
    assert _opts("llama.cpp", lin576)["Q4_0"].weight == GGML_SCHEMES["Q4_0"]  # type: ignore[union-attr]
    assert set(_opts("llama.cpp", lin48)) == {"float"}  # 48 is not whole blocks of 32
    assert set(_opts("llama.cpp", emb)) == {"float", "Q8_0", "Q5_0", "Q4_0"}
    assert set(_opts("llama.cpp", nn.Conv2d(3, 8, 3))) == {"float"}
    v = _opts("vllm", lin576)
    assert "w4-g64-sym" in v and v["w4-g64-sym"].weight.granularity.size == 64  # type: ignore[union-attr]
    assert "w4-g32-sym" not in v and set(_opts("vllm", emb)) == {"float"}
    assert v["w8a8-dynamic-sym"].activation.symmetric  # type: ignore[union-attr]
    for spec in _opts("tensorrt", lin576).values():
        if spec is not None and spec.activation is not None:
            assert spec.activation.symmetric and spec.weight.symmetric  # type: ignore[union-attr]
    assert set(_opts("tensorrt", emb)) == {"float"}
    assert "w8a8-dynamic" in target_candidates("torch", "latency")("x", lin576)
    t = _opts("transformers", lin576)  # one scheme, so a quantized embedding loads exactly
    assert set(t) == {"float", "w4-g32-sym"} and set(_opts("transformers", emb)) == set(t)
    assert t["w4-g32-sym"].weight == qb.Scheme(4, granularity=qb.PerGroup(size=32))  # type: ignore[union-attr]
    assert set(_opts("transformers", lin48)) == {"float"}
    with pytest.raises(
        ConfigError, match=r"accepted: torch, ort, tensorrt, vllm, transformers, llama\.cpp"
    ):
        target_candidates("tflite")
    assert TARGETS == ("torch", "ort", "tensorrt", "vllm", "transformers", "llama.cpp")


class _Engine:
    name = "fake"

    def latency_ms(self, layer_name, module, spec, example_input_shape) -> float:  # type: ignore[no-untyped-def]
        return module.weight.numel() * 1e-3 * (1.0 if spec is None else 0.5)

    def model_latency_ms(self, model: nn.Module, example_inputs: object) -> float:
        return 1.0


def _llama_task(folder: Path):  # type: ignore[no-untyped-def]
    from tiny_llama import make_tiny_llama, token_batch

    model = make_tiny_llama(folder)
    ids = token_batch(model.config.vocab_size, n=2, length=16)
    with torch.no_grad():
        ref = F.log_softmax(model(ids).logits, -1)

    def fidelity(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            lp = F.log_softmax(m(ids).logits, -1)
        kl = F.kl_div(lp, ref, log_target=True, reduction="none").sum(-1).mean()
        return {"fid": float(torch.exp(-kl))}

    return model, [{"input_ids": ids}], fidelity


def test_llama_cpp_search_plan_exports_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("gguf")
    model, calib, ev = _llama_task(tmp_path / "src")
    res = qb.search(model, (calib, ev), qb.Budget(max_drop=0.002), metric="fid",
                    cache_dir=tmp_path / "cache", latency_model=_Engine(), presets=["int8-weight"],
                    front_evals=1, progress=False, target="llama.cpp", max_evals=3)  # fmt: skip
    chosen = {k for k in (res.chosen.choice or {}).values()}
    assert chosen <= {"float", *GGML_SCHEMES} and chosen - {"float"}
    q = qb.quantize(model, res.plan, calib_data=calib, progress=False)
    out = qb.export(q, tmp_path / "m.gguf", format="gguf", source=tmp_path / "src")
    assert set(out.layers.values()) <= set(GGML_SCHEMES)  # nothing fell back
    assert len(out.layers) == sum(k != "float" for k in res.chosen.choice.values())  # type: ignore[union-attr]


def test_transformers_search_plan_loads_exactly_with_quantized_embeddings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--target transformers under a byte budget: the chosen Plan (embedding included) exports
    as one config group, Transformers loads it as simulated, and the folder's tensors are the
    bytes the search counted (plus the small per-layer ``weight_shape`` and the header)."""
    pytest.importorskip("compressed_tensors")
    transformers = pytest.importorskip("transformers")
    from safetensors import safe_open

    model, calib, ev = _llama_task(tmp_path / "src")
    budget = 0.45 * sum(p.numel() * 4 for p in model.parameters())
    res = qb.search(model, (calib, ev), qb.Budget(max_bytes=budget), metric="fid",
                    cache_dir=tmp_path / "cache", latency_model=_Engine(), front_evals=1,
                    progress=False, target="transformers", max_evals=2)  # fmt: skip
    assert res.met_budget and res.chosen.nbytes <= budget
    assert res.plan.layers.get("model.embed_tokens") is not None  # the embedding is quantized
    q = qb.quantize(model, res.plan, calib_data=calib, progress=False)
    out = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=tmp_path / "src")
    assert out.notes[0].startswith("quantized embeddings: load in Transformers with")
    cfg = transformers.CompressedTensorsConfig(dequantize=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "ct"), quantization_config=cfg
    ).eval()
    ids = calib[0]["input_ids"]
    with torch.no_grad():
        a, b = F.log_softmax(q(ids).logits, -1), F.log_softmax(hf(ids).logits, -1)
    assert float(F.kl_div(b, a, log_target=True, reduction="none").sum(-1).mean()) <= 1e-6
    with safe_open(str(tmp_path / "ct" / "model.safetensors"), "pt") as f:
        stored = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118
        tensor_bytes = sum(f.get_tensor(k).nbytes for k in stored)
    shapes = sum(k.endswith("weight_shape") for k in stored)
    assert tensor_bytes - 16 * shapes == res.chosen.nbytes


def test_a_target_brings_its_own_uniform_presets(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With --target llama.cpp the presets beside the searched Plans (which may be chosen) are
    the uniform llama.cpp types, not generic presets llama.cpp cannot run exactly."""
    model, calib, ev = _llama_task(tmp_path / "src")
    res = qb.search(model, (calib, ev), qb.Budget(max_drop=0.002), metric="fid",
                    cache_dir=tmp_path / "cache", latency_model=_Engine(), front_evals=1,
                    progress=False, target="llama.cpp", max_evals=2)  # fmt: skip
    assert sorted(p.name for p in res.presets) == [f"uniform-{k}" for k in sorted(EXACT)]
    for p in res.presets:  # every layer the type fits takes it; the rest stay float
        assert {s for s in p.plan.layers.values()} == {
            qb.LayerSpec(weight=GGML_SCHEMES[p.name.removeprefix("uniform-")])
        }
    chosen = {k for k in (res.chosen.choice or {}).values()}
    assert chosen <= {"float", *EXACT}


def test_cli_rejects_unknown_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from quantbalance.cli.main import app

    r = CliRunner().invoke(app, ["search", "--model", "export_factories:mlp", "--max-drop", "1%",
                                 "--target", "tflite", "--out", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 2 and "accepted: torch, ort" in " ".join(r.output.split())


def test_cli_search_target_and_export(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from quantbalance.cli.main import app

    out = tmp_path / "s"
    args = ["search", "--model", "export_factories:mlp_eval", "--metric", "cos", "--max-drop",
            "1%", "--target", "ort", "--max-evals", "2", "--cache-dir", str(tmp_path / "c"),
            "--export", "qb", "--out", str(out)]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code in (0, 1), r.output
    net, _ = __import__("export_factories").mlp()
    q = qb.load(out / "model.safetensors", net)
    assert q.qb_plan == qb.Plan.load(out / "plan.json")
