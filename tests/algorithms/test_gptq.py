"""GPTQ: lower layer output error than round to nearest, standard layout, robust Hessians."""

import logging
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.algorithms.gptq import gptq_options, gptq_quantize, gptq_solve
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.formats import PerChannel, PerGroup, Scheme, grid_shape, quantize_tensor
from quantbalance.nn import QConv2d, QEmbedding, QLinear


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: threads only add contention on a shared machine
    yield
    torch.set_num_threads(n)


def layer_data(n_in: int = 80, n_out: int = 48, n: int = 1024) -> tuple[torch.Tensor, ...]:
    """Correlated inputs with one outlier channel, and a weight."""
    g = torch.Generator().manual_seed(0)
    mix = torch.eye(n_in) + torch.randn(n_in, n_in, generator=g) / n_in**0.5
    x = torch.randn(n, n_in, generator=g) @ mix
    x[:, 3] *= 8
    w = torch.randn(n_out, n_in, generator=g)
    return x, w, 2 * x.T @ x / n


def out_err(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float((x @ w.T - x @ wq.T).square().sum())


UINT2 = Scheme(2, signed=False, symmetric=False, granularity=PerGroup(size=16))
SCHEMES = {
    "int4-per-channel": (Scheme(4, granularity=PerChannel()), False),
    "int4-g32-partial": (Scheme(4, granularity=PerGroup(size=32)), False),  # 80 = 32+32+16
    "int3-g32-asym": (Scheme(3, symmetric=False, granularity=PerGroup(size=32)), False),
    "int3-g32-asym-act-order": (Scheme(3, symmetric=False, granularity=PerGroup(size=32)), True),
    "int4-per-channel-act-order": (Scheme(4, granularity=PerChannel()), True),
    "uint2-g16-asym": (UINT2, False),
    "nf4-g32": (Scheme(4, kind="nf4", granularity=PerGroup(size=32)), True),
}


@pytest.mark.parametrize("label", list(SCHEMES))
def test_output_error_below_round_to_nearest(label: str) -> None:
    scheme, act_order = SCHEMES[label]
    x, w, h = layer_data()
    res = gptq_solve(w, h, scheme, block_size=32, act_order=act_order)
    qt = res.qweight
    rtn = quantize_tensor(w, scheme)
    assert out_err(x, w, qt.dequantize()) < 0.75 * out_err(x, w, rtn.dequantize())
    # the standard layout of quantize_tensor: same grid, byte size, scheme
    qt.validate()
    assert tuple(qt.scale.shape) == grid_shape((48, 80), scheme.granularity)
    assert qt.nbytes == rtn.nbytes and qt.scheme == scheme and qt.shape == (48, 80)
    assert res.damp == 0.01 and res.dead == 0 and not res.fallback and res.loss > 0


def test_act_order_keeps_the_original_column_groups() -> None:
    scheme = Scheme(3, symmetric=False, granularity=PerGroup(size=32))
    _, w, h = layer_data()
    qt = gptq_quantize(w, h, scheme, act_order=True)  # static groups: params of the original W
    rtn = quantize_tensor(w, scheme)
    assert torch.equal(qt.scale, rtn.scale) and torch.equal(qt.zero_point, rtn.zero_point)
    with pytest.raises(ConfigError, match="static_groups"):
        gptq_quantize(w, h, scheme, act_order=True, static_groups=False)


@pytest.mark.parametrize("gran", [PerGroup(size=32), PerChannel(), qb.PerTensor()])
def test_row_slices_and_observers_keep_the_result(gran, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import quantbalance.algorithms.gptq as gptq_module

    _, w, h = layer_data()
    scheme = Scheme(3, symmetric=False, granularity=gran)
    whole = gptq_quantize(w, h, scheme)
    monkeypatch.setattr(gptq_module, "ROW_CHUNK", 10)  # 48 rows -> 5 slices (per-row params)
    sliced = gptq_quantize(w, h, scheme)
    assert torch.equal(sliced.codes(), whole.codes())
    torch.testing.assert_close(sliced.scale, whole.scale)  # BLAS rounding may differ
    mse = gptq_solve(w, h, scheme, observer="mse").qweight
    mse.validate()
    assert not torch.equal(mse.scale, whole.scale)  # clipped ranges, as round to nearest's mse


def test_identity_hessian_is_round_to_nearest() -> None:
    _, w, _ = layer_data()
    for scheme, _ in SCHEMES.values():
        qt = gptq_quantize(w, torch.eye(80), scheme, block_size=16)
        assert torch.equal(qt.codes(), quantize_tensor(w, scheme).codes()), scheme.label


def test_singular_hessian_with_dead_columns() -> None:
    x, w, _ = layer_data(n=12)  # 12 samples: rank 12 < 80
    x[:, [5, 40]] = 0  # dead input channels
    h = 2 * x.T @ x / 12
    res = gptq_solve(w, h, Scheme(4, granularity=PerGroup(size=32)), damp=0.0)
    wq = res.qweight.dequantize()
    assert torch.isfinite(wq).all() and res.dead == 2 and not res.fallback
    assert res.damp > 0  # raised until the Cholesky factorisation exists
    rtn = quantize_tensor(w, Scheme(4, granularity=PerGroup(size=32))).dequantize()
    assert out_err(x, w, wq) < out_err(x, w, rtn)
    assert wq[:, [5, 40]].abs().sum() > 0  # dead columns are rounded, not zeroed
    static = gptq_quantize(w, h, Scheme(4, granularity=PerGroup(size=32)), static_groups=True)
    assert torch.equal(static.dequantize()[:, [5, 40]], rtn[:, [5, 40]])


def test_non_finite_and_indefinite_hessians_are_reported(caplog) -> None:  # type: ignore[no-untyped-def]
    _, w, h = layer_data()
    scheme = Scheme(4, granularity=PerGroup(size=32))
    bad = h.clone()
    bad[2, 7] = float("nan")
    with caplog.at_level(logging.WARNING, logger="quantbalance"):
        res = gptq_solve(w, bad, scheme, name="layer.x")
    assert res.fallback and "layer.x: Hessian has NaN/Inf" in caplog.text
    assert torch.equal(res.qweight.codes(), quantize_tensor(w, scheme).codes())
    indefinite = (
        torch.eye(80) + 2 * torch.diag(torch.ones(79), 1) + 2 * torch.diag(torch.ones(79), -1)
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="quantbalance"):
        res = gptq_solve(w, indefinite, scheme, name="layer.y")
    assert (
        res.damp > 1
        and not res.fallback
        and "layer.y: Hessian not positive definite" in caplog.text
    )
    assert torch.isfinite(res.qweight.dequantize()).all()


def test_bad_inputs_are_named() -> None:
    _, w, h = layer_data()
    with pytest.raises(UnsupportedError, match="GPTQ supports kinds"):
        gptq_quantize(w, h, Scheme(3, kind="codebook"))
    with pytest.raises(ConfigError, match="does not match"):
        gptq_quantize(w, h[:10, :10], Scheme(4))
    with pytest.raises(ConfigError, match="block_size"):
        gptq_quantize(w, h, Scheme(4), block_size=0)
    with pytest.raises(ConfigError, match="unknown field 'dampening'"), gptq_options(dampening=0.1):
        pass


# ------------------------------------------------------------------------------- model level


class Block(nn.Module):
    """Pre-norm MLP block with a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(48), nn.Linear(48, 96), nn.Linear(96, 48)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.relu(self.up(self.norm(h))))


class TinyLM(nn.Module):
    """Embedding -> 2 blocks in a ModuleList -> head (outside the blocks)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(64, 48)
        self.layers = nn.ModuleList(Block() for _ in range(2))
        self.head = nn.Linear(48, 64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for blk in self.layers:
            h = blk(h)
        return self.head(h)


def lm_batches(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (4, 24), generator=g) for _ in range(n)]


def test_gptq_step_beats_rtn_on_a_model() -> None:
    m = TinyLM().eval()
    spec = qb.LayerSpec(weight=Scheme(3, symmetric=False, granularity=PerGroup(size=32)))
    plan = qb.Plan(layers={"re:.*": spec})  # the Linear layers, head (outside the blocks) included
    calib, test = lm_batches(8, 1), torch.cat(lm_batches(4, 2))
    with gptq_options(damp=0.02):
        q = qb.quantize(m, plan, calib_data=calib, algorithm="gptq", progress=False)
    r = qb.quantize(m, plan, calib_data=calib, algorithm="rtn", progress=False)
    with torch.no_grad():
        ref = m(test)
        assert float((q(test) - ref).square().mean()) < 0.8 * float((r(test) - ref).square().mean())
    log = q.qb_info.algorithm_log["gptq"]
    assert set(log) == {"layers.0.up", "layers.0.down", "layers.1.up", "layers.1.down", "head"}
    assert all(v["damp"] == 0.02 for v in log.values())
    assert isinstance(q.head, QLinear)
    with_emb = qb.Plan(layers={"re:.*": spec, "emb": spec})
    q = qb.quantize(m, with_emb, calib_data=calib, algorithm="gptq", progress=False)
    assert isinstance(q.emb, QEmbedding) and "emb" not in q.qb_info.algorithm_log["gptq"]


def test_gptq_on_convolutions_and_missing_data() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                      nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()  # fmt: skip
    calib = [torch.randn(4, 3, 10, 10) for _ in range(2)]
    q = qb.quantize(m, bitwidths=[4, 4, 4], calib_data=calib, algorithm="gptq", progress=False)
    assert set(q.qb_info.algorithm_log["gptq"]) == {"0", "4"}  # depthwise: round to nearest
    assert isinstance(q[2], QConv2d)
    with pytest.raises(CalibrationError, match="gptq"):
        qb.quantize(m, bitwidths=[4, 4, 4], algorithm="gptq", progress=False)


def _codes_equal(a: nn.Module, b: nn.Module) -> bool:
    qa = {n: m.qweight for n, m in a.named_modules() if hasattr(m, "qweight")}
    qb_ = {n: m.qweight for n, m in b.named_modules() if hasattr(m, "qweight")}
    return qa.keys() == qb_.keys() and all(
        torch.equal(qa[n].packed, qb_[n].packed) and torch.equal(qa[n].scale, qb_[n].scale)
        for n in qa
    )


def test_finished_blocks_are_installed_and_their_float_weights_freed(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import gc
    import importlib
    import weakref

    qmod = importlib.import_module("quantbalance.quantize")  # qb.quantize is the function

    m = TinyLM().eval()
    spec = qb.LayerSpec(weight=Scheme(4, symmetric=False, granularity=PerGroup(size=32)))
    plan = qb.Plan(layers={"re:.*": spec, "emb": spec})
    calib = lm_batches(4, 1)
    eager_copy = qb.quantize(m, plan, calib_data=calib, algorithm="gptq", progress=False)
    monkeypatch.setattr(qmod, "EAGER_STEPS", frozenset())  # install everything at the end
    late = qb.quantize(m, plan, calib_data=calib, algorithm="gptq", progress=False)
    monkeypatch.undo()
    assert _codes_equal(eager_copy, late)  # installing early changes nothing in the result

    float_up = weakref.ref(m.layers[0].up.weight)
    seen: dict[str, object] = {}

    def check(block: nn.Module, _args: object) -> None:  # runs when block 1 is calibrated
        gc.collect()
        seen["block0_up"] = type(m.layers[0].up).__name__
        seen["float_freed"] = float_up() is None

    handle = m.layers[1].register_forward_pre_hook(check)
    q = qb.quantize(m, plan, calib_data=calib, algorithm="gptq", progress=False, inplace=True)
    handle.remove()
    assert q is m and isinstance(m.layers[0].up, QLinear) and isinstance(m.emb, QEmbedding)
    assert seen == {"block0_up": "QLinear", "float_freed": True}
    assert _codes_equal(q, late)  # in place: the same codes as on a copy
    # no quantized module ran during quantization: none holds a dequantized float copy yet
    assert all(mod._w is None for mod in q.modules() if hasattr(mod, "qweight"))


def test_plan_algorithm_args_set_gptq_options_per_layer() -> None:
    m = TinyLM().eval()
    scheme = Scheme(4, symmetric=False, granularity=PerGroup(size=32))
    block0 = qb.LayerSpec(weight=scheme, algorithm_args={"gptq": {"damp": 0.05}})
    plan = qb.Plan(layers={"re:layers\\.0\\..*": block0, "re:.*": qb.LayerSpec(weight=scheme)})
    calib = lm_batches(4, 1)
    with gptq_options(damp=0.02):  # the context's options, overridden by the Plan per layer
        q = qb.quantize(m, plan, calib_data=calib, algorithm="gptq", progress=False)
    damps = {n: v["damp"] for n, v in q.qb_info.algorithm_log["gptq"].items()}
    assert damps == {"layers.0.up": 0.05, "layers.0.down": 0.05, "layers.1.up": 0.02,
                     "layers.1.down": 0.02, "head": 0.02}  # fmt: skip
