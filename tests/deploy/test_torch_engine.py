import os

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy.torch_engine import Int4Linear, Int8Linear, to_torch_engine
from quantbalance.deploy.torch_kernels import onednn_available
from quantbalance.hardware import detect
from tiny_bert import tiny_bert

# int8 weight-only linears: _weight_int8pack_mm where bf16 is native, else the dequantized form
INT8_WEIGHT = "int8-weight-pack" if detect().native_bf16 else "dequant"


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 256), nn.LayerNorm(256), nn.Linear(256, 32)
    ).eval()


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


W4G64 = qb.Plan(
    layers={
        "re:.*": qb.LayerSpec(
            weight=qb.Scheme(4, symmetric=False, granularity=qb.PerGroup(size=64))
        )
    }
)


def test_dequantized_layers_with_int8_inputs_compile_to_one_graph() -> None:
    # Conv2d with dynamic inputs has no int8 kernel: it runs its simulated forward, whose
    # fake_quantize is a type-checked public function. Reading the type hints under
    # torch.compile broke the engine's graph at every such layer (fashion: 8 graphs).
    from quantbalance.deploy.torch_engine import compile_isolated

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten()).eval()
    x = torch.randn(2, 3, 8, 8)
    q = qb.quantize(net, "w8a8-dynamic", progress=False)
    e = to_torch_engine(q, compile=False, dtype=torch.float32)
    assert e.qb_engine_kernels == {"dequant": 2}
    with torch.inference_mode():
        ex = torch._dynamo.explain(e)(x)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0)
    with torch.no_grad():
        torch.testing.assert_close(compile_isolated(e)(x), q(x), atol=1e-5, rtol=0)
    with pytest.raises(qb.ArgumentError, match="scheme"):  # still checked when called eagerly
        qb.formats.fake_quantize(x, "w8", 1.0, 0)


@pytest.mark.isa
@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN int8 kernels")
@pytest.mark.parametrize("plan", ["w8a8", "w8a8-dynamic"])
def test_int8_engine_matches_simulation(plan: str) -> None:
    net = mlp()
    x = torch.randn(4, 16, 64)
    q = qb.quantize(net, plan, calib_data=[x], progress=False)
    e = to_torch_engine(q, compile=False, dtype=torch.float32)
    assert isinstance(e[0], Int8Linear) and isinstance(e[4], Int8Linear)
    assert e.qb_engine_kernels == {"int8-onednn": 3}
    with torch.no_grad():
        assert cos(q(x), e(x)) > 0.99999
        # Same integer arithmetic: differences are float rounding only.
        assert torch.allclose(q(x), e(x).float(), atol=1e-3, rtol=1e-3)


def test_int4_engine_matches_simulation_in_bf16() -> None:
    net = mlp()
    x = torch.randn(4, 16, 64)
    q = qb.quantize(net, W4G64, progress=False)
    e = to_torch_engine(q, compile=False)
    assert isinstance(e[2], Int4Linear)
    with torch.no_grad():
        assert cos(q(x), e(x)) > 0.9999


def test_user_model_is_untouched_and_fallbacks_are_counted() -> None:
    net = nn.Sequential(nn.Conv1d(4, 8, 3), nn.Flatten(), nn.Linear(8 * 6, 5)).eval()
    x = torch.randn(2, 4, 8)
    q = qb.quantize(net, "int8-weight", progress=False)
    e = to_torch_engine(q, compile=False)
    want = {"dequant": 1}
    want[INT8_WEIGHT] = want.get(INT8_WEIGHT, 0) + 1
    assert e.qb_engine_kernels == want
    assert next(q.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert cos(q(x), e(x)) > 0.999


@pytest.mark.isa
@pytest.mark.isa  # failed/crashed under AVX2 when inductor reused natively compiled kernels
def test_session_auto_picks_the_measured_fastest_engine() -> None:
    net = mlp()
    x = torch.randn(4, 16, 64)
    q = qb.quantize(net, "w8a8", calib_data=[x], progress=False)
    run = qb.deploy.session(q, backend="auto", example_inputs=x)
    assert set(run.timings_ms) == {"torch", "ort"} and run.rejected == {}
    assert run.backend == min(run.timings_ms, key=run.timings_ms.__getitem__)
    with torch.no_grad():
        assert cos(q(x), torch.as_tensor(run(x))) > 0.9999
    with pytest.raises(qb.ConfigError, match="needs the quantized model"):
        qb.deploy.session("model.onnx", backend="torch")


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN int8 kernels")
def test_hf_attention_is_fused_and_still_matches() -> None:
    bert = tiny_bert(outliers=False)
    ids = torch.randint(0, 50, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # padding must still be masked by the fused kernel
    q = qb.quantize(bert, "w8a8-dynamic", progress=False)
    e = to_torch_engine(q, compile=False, dtype=torch.float32)
    assert e.config._attn_implementation == "sdpa" and q.config._attn_implementation == "eager"
    with torch.no_grad():
        want = q(input_ids=ids, attention_mask=mask).last_hidden_state
        got = e(input_ids=ids, attention_mask=mask).last_hidden_state
    assert cos(want, got) > 0.99999
    keep = to_torch_engine(q, compile=False, fused_attention=False)
    assert keep.config._attn_implementation == "eager"


@pytest.mark.isa  # compiled under ATEN_CPU_CAPABILITY=avx2: its own inductor cache (NaN before)
def test_compiled_engines_keep_separate_compile_caches() -> None:
    from quantbalance.deploy.torch_engine import compile_isolated

    net = mlp()
    a, b = compile_isolated(net), compile_isolated(net)
    code_a, code_b = a._orig_mod.forward.__code__, b._orig_mod.forward.__code__
    assert code_a is not code_b and code_a.co_name != code_b.co_name
    x = torch.randn(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), net(x))
        torch.testing.assert_close(b(x), net(x))
    assert a._orig_mod.module is net and a.training == net.training  # attributes fall through
    e = to_torch_engine(qb.quantize(net, "int8-weight", progress=False))
    assert e.qb_engine_kernels == {INT8_WEIGHT: 3}
    with torch.no_grad():
        assert cos(e(x), net(x)) > 0.999


def test_capability_held_processes_get_their_own_inductor_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # inductor's cache is not keyed on ATEN_CPU_CAPABILITY: kernels compiled natively gave NaNs
    # in a process held to avx2 (and intermittent crashes); a fresh cache computed right.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from quantbalance.deploy.torch_engine import separate_inductor_cache

    default = os.path.abspath(default_cache_dir())
    for cap, before, after in (
        ("avx2", None, f"{default}-avx2"),
        ("AVX2", default, f"{default}-avx2"),
        ("avx2", str(tmp_path), str(tmp_path)),  # the user's own folder stays
        ("", None, None),
    ):
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", cap)
        if before is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", before)
        changed = separate_inductor_cache()
        assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == after
        assert changed == (after if after not in (before, None) else None)


def test_float_engine_folds_batchnorm_and_leaves_the_model() -> None:
    """A float model on the engine (the baseline rows) gets its Conv->BatchNorm folded, as ORT
    folds it and as ``qb.quantize`` does before quantizing."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    e = to_torch_engine(net, compile=False, dtype=torch.float32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in e.modules())
    assert isinstance(net[1], nn.BatchNorm2d)  # the user's model is untouched
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(e(x), net(x), rtol=1e-5, atol=1e-5)
