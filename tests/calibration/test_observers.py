import pytest
import torch

import quantbalance as qb
from quantbalance.calibration import (
    OBSERVERS,
    EntropyObserver,
    Histogram,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from quantbalance.errors import ConfigError, NonFiniteError


def heavy_tailed(n: int = 200_000, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.distributions.StudentT(2.5).sample((n,))


def mse_with(obs, x: torch.Tensor, scheme: qb.Scheme) -> float:  # type: ignore[no-untyped-def]
    qt = qb.quantize_tensor(x, scheme, observer=obs)
    return float((x - qt.dequantize()).pow(2).mean())


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_observer_beats_minmax_on_heavy_tails(bits: int) -> None:
    x = heavy_tailed()
    s = qb.Scheme(bits, granularity=qb.PerTensor())
    assert mse_with(MSEObserver(), x, s) < 0.7 * mse_with(MinMaxObserver(), x, s)


def test_mse_observer_per_channel_weights() -> None:
    w = heavy_tailed(64 * 512).reshape(64, 512)
    s = qb.Scheme(4)
    mse, minmax = MSEObserver(qb.PerChannel()), MinMaxObserver(qb.PerChannel())
    assert mse_with(mse, w, s) < mse_with(minmax, w, s)


def test_minmax_accumulates_over_batches() -> None:
    o = MinMaxObserver(qb.PerChannel(axis=1))
    o.update(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    o.update(torch.tensor([[-4.0, 1.0], [0.0, 7.0]]))
    assert o.lo.tolist() == [-4.0, -2.0] and o.hi.tolist() == [3.0, 7.0]
    scale, zp = o.qparams(qb.Scheme(8, granularity=qb.PerChannel(axis=1)))
    assert scale.shape == (2,) and zp is None
    assert torch.allclose(scale, torch.tensor([4.0, 7.0]) / 127.5)


def test_ema_moves_towards_new_batches() -> None:
    o = MovingAverageMinMaxObserver(momentum=0.5)
    o.update(torch.tensor([0.0, 2.0]))
    o.update(torch.tensor([0.0, 4.0]))
    assert float(o.hi[0]) == 3.0


def test_percentile_clips_outliers() -> None:
    x = torch.linspace(-1, 1, 100_001)
    x[0] = -30.0  # histogram resolution is radius / n_bins
    o = PercentileObserver(percentile=99.9)
    o.update(x)
    lo, hi = o.range(qb.Scheme(8, granularity=qb.PerTensor()))
    assert 0.9 < float(hi) < 1.1 and -1.1 < float(lo) < -0.9


def test_entropy_threshold_is_inside_the_range() -> None:
    x = heavy_tailed()
    o = EntropyObserver(n_bins=1024)
    o.update(x)
    _, hi = o.range(qb.Scheme(8, granularity=qb.PerTensor()))
    assert 1.0 < float(hi) < float(x.abs().max())


def test_histogram_growth_keeps_counts_and_quantiles() -> None:
    h = Histogram(64)
    h.update(torch.linspace(-1, 1, 1001))
    h.update(torch.linspace(-10, 10, 1001))
    assert float(h.counts.sum()) == 2002
    assert h.radius >= 10
    assert abs(h.quantile(0.5)) < 0.5


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_infinite_values_are_excluded_and_counted(name: str) -> None:
    # An additive attention mask: finfo.min / -inf in some positions.
    x = torch.randn(4, 16)
    x[:, 10:] = -float("inf")
    o = make_observer(name)
    o.update(x)
    assert o.n_nonfinite == 4 * 6
    scale, _ = o.qparams(qb.Scheme(8, granularity=qb.PerTensor()))
    assert torch.isfinite(scale).all() and float(scale) < 1.0


@pytest.mark.parametrize("name", list(OBSERVERS))
def test_nan_or_all_infinite_raise(name: str) -> None:
    with pytest.raises(NonFiniteError, match="NaN"):
        make_observer(name).update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(NonFiniteError, match="no finite"):
        make_observer(name).update(torch.full((3,), float("inf")))


def test_bad_observer_configs() -> None:
    with pytest.raises(ConfigError, match="accepted"):
        make_observer("kl")
    with pytest.raises(ConfigError, match="PerTensor"):
        PercentileObserver(qb.PerChannel())
    with pytest.raises(ConfigError, match="percentile=101"):
        PercentileObserver(percentile=101)
    with pytest.raises(ConfigError, match="no data"):
        MinMaxObserver().qparams(qb.Scheme(8))
    o = MinMaxObserver(qb.PerChannel(axis=1))
    o.update(torch.ones(2, 3))
    with pytest.raises(ConfigError, match="grid changed"):
        o.update(torch.ones(2, 4))
    with pytest.raises(ConfigError, match="granularity"):
        qb.quantize_tensor(torch.ones(4, 4), qb.Scheme(8), observer=MinMaxObserver())
