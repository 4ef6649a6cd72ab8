"""The latency model times the modules the torch engine builds (one kernel table)."""

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy.torch_engine import to_torch_engine
from quantbalance.search.latency import TorchLatencyModel, build_kernel, kernel_for, kernel_kind

pytestmark = pytest.mark.isa  # also under ONEDNN_MAX_CPU_ISA=AVX2 (see the Makefile)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.lin = nn.Linear(16, 32)
        self.odd = nn.Linear(32, 8)  # in_features % 16 == 0, but 4-bit groups of 128 do not fit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.odd(self.lin(self.conv(x).mean(dim=(2, 3))))


@pytest.mark.parametrize("preset", ["w8a8", "w8a8-dynamic", "int8-weight", "w4-g128", "w4a8"])
def test_timed_kernel_is_the_engines_kernel_for_every_layer(preset: str) -> None:
    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(4, 3, 8, 8)
    q = qb.quantize(net, preset, calib_data=[x], progress=False)
    engine = to_torch_engine(q, compile=False)
    spec = q.qb_plan.layers["re:.*"]
    for name in ("conv", "lin", "odd"):
        module = net.get_submodule(name)
        built = type(engine.get_submodule(name))
        want = kernel_for(module, spec)
        assert want is not None
        timed = build_kernel(
            module, spec, (4, 3, 8, 8) if name == "conv" else (4, module.in_features)
        )
        assert timed() is not None
        # the engine's module for the layer is the class the table's kernel builds
        assert built.__name__ == type(want.build(q.get_submodule(name), torch.float32)).__name__
        assert kernel_kind(module, spec).startswith(want.name)


def test_float_layers_and_equal_layers_share_timings() -> None:
    m = TorchLatencyModel(repeats=2, warmup=1, min_sample_s=0.0)
    a, b = nn.Linear(32, 32), nn.Linear(32, 32)
    spec = qb.preset("w8a8").layers["re:.*"]
    t = m.latency_many([("a", a, spec, (8, 32)), ("b", b, spec, (8, 32)), ("c", a, None, (8, 32))])
    assert t[0] == t[1] > 0 and t[2] > 0 and len(m._memo) == 2
    assert kernel_kind(a, None) == "float" and m.name.startswith("torch-cpu/")


def test_bytes_follow_the_lowering_quantize_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantbalance import lowering
    from quantbalance.hardware import from_sources
    from quantbalance.search import costs

    lin, spec = nn.Linear(64, 32), qb.preset("w8a8").layers["re:.*"]
    for flags, code_bytes in (("avx2", 64 * 32 * 7 // 8), ("avx2 avx512f avx512_vnni", 64 * 32)):
        hw = from_sources("x86_64", f"flags : {flags}\n", {}, "AVX2")
        monkeypatch.setattr(lowering, "detect", lambda hw=hw: hw)
        assert costs.layer_nbytes(lin, spec) == code_bytes + 32 * 4 + costs.ACT_QUANTIZER_BYTES
    monkeypatch.undo()
    with torch.no_grad():
        q = qb.quantize(nn.Sequential(lin), "w8a8", calib_data=[torch.randn(4, 64)], progress=False)
    assert qb.model_nbytes(q) == costs.layer_nbytes(lin, spec) + 32 * 4  # + the float bias


def test_auto_mode_times_what_the_compiled_engine_fuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine runs compiled: layers that quantize their input are timed compiled (the
    # quantization fuses), one-kernel layers eager, the rest of the model from the compiled
    # float engine.
    from quantbalance.deploy import torch_engine
    from quantbalance.search import latency

    lin, emb = nn.Linear(32, 32), nn.Embedding(10, 32)
    w8a8, int8w = qb.preset("w8a8").layers["re:.*"], qb.preset("int8-weight").layers["re:.*"]
    assert latency.fuses_input(lin, w8a8) and latency.fuses_input(emb, w8a8) is False
    assert not latency.fuses_input(lin, int8w) and not latency.fuses_input(lin, None)
    built, real_build = [], latency.build_kernel
    monkeypatch.setattr(
        latency, "build_kernel",
        lambda m, s, sh, compile=False: built.append((s, compile)) or real_build(m, s, sh),
    )  # fmt: skip
    m = TorchLatencyModel(repeats=1, warmup=1, min_sample_s=0.0, compile="auto")
    items = [("a", lin, w8a8, (8, 32)), ("b", lin, int8w, (8, 32)), ("c", lin, None, (8, 32))]
    m.latency_many(items)
    assert built == [(w8a8, True), (int8w, False), (None, False)]
    compiled = []
    real = torch_engine.compile_isolated
    monkeypatch.setattr(
        torch_engine, "compile_isolated", lambda mod: compiled.append(mod) or real(mod)
    )
    assert m.model_latency_ms(nn.Sequential(lin, nn.GELU()), torch.randn(8, 32)) > 0
    assert len(compiled) == 1
    eager = TorchLatencyModel(repeats=1, warmup=1, compile=False)
    assert eager.model_latency_ms(nn.Sequential(lin), torch.randn(8, 32)) > 0 and len(compiled) == 1
    assert len({m.name, eager.name, TorchLatencyModel(compile=True).name}) == 3
    with pytest.raises(qb.ConfigError, match="compile='yes'; accepted"):
        TorchLatencyModel(compile="yes")  # type: ignore[arg-type]
    for env, mode in (("auto", "/fused"), ("0", "/eager"), ("1", "/compiled")):
        monkeypatch.setenv("QB_LATENCY_COMPILE", env)
        assert mode in TorchLatencyModel().name
    monkeypatch.setenv("QB_LATENCY_COMPILE", "yes")
    with pytest.raises(qb.ConfigError, match="QB_LATENCY_COMPILE='yes'; accepted: auto, 1, 0"):
        TorchLatencyModel()


def test_a_layer_or_model_that_does_not_compile_is_timed_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from quantbalance.deploy import torch_engine

    def broken(mod: nn.Module) -> nn.Module:
        def fail(*a: object) -> None:
            raise RuntimeError("inductor said no")

        return fail  # type: ignore[return-value]

    monkeypatch.setattr(torch_engine, "compile_isolated", broken)
    m = TorchLatencyModel(repeats=1, warmup=1, min_sample_s=0.0, compile="auto")
    lin, w8a8 = nn.Linear(32, 32), qb.preset("w8a8").layers["re:.*"]
    assert m.latency_many([("a", lin, w8a8, (8, 32))])[0] > 0
    assert m.model_latency_ms(nn.Sequential(lin), torch.randn(8, 32)) > 0
    assert caplog.text.count("did not compile (inductor said no); timed eager") == 2
