import math

import pytest
import torch
from tiny import cnn_batches, trained_cnn

import quantbalance as qb
from quantbalance.errors import ConfigError


def test_model_nbytes_exact() -> None:
    m = trained_cnn()
    float_bytes = sum(p.numel() * 4 for p in m.parameters()) + sum(
        b.numel() * b.element_size() for b in m.buffers()
    )
    assert qb.model_nbytes(m) == float_bytes
    q = qb.quantize(m, "int8-weight", progress=False)
    # After folding: stem 72 w + 8 b, dw 72 + 8, pw 64 + 8, head 32 + 4; int8 codes + 4B scales.
    codes = 72 + 72 + 64 + 32
    scales = 4 * (8 + 8 + 8 + 4)
    biases = 4 * (8 + 8 + 8 + 4)
    assert qb.model_nbytes(q) == codes + scales + biases


def test_compare_reports_metrics_sizes_and_layer_sqnr() -> None:
    m = trained_cnn()
    calib = cnn_batches(2)
    x = cnn_batches(1, seed=7)[0]
    q = qb.quantize(m, "w8a8", calib, progress=False)

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"mean_out": float(model(x).mean())}

    c = qb.compare(m, q, eval_fn, batches=[x])
    assert set(c.layer_sqnr) == {"stem", "dw", "pw", "head"}
    assert all(v > 25 for v in c.layer_sqnr.values())
    assert math.isclose(
        c.deltas["mean_out"], c.quant_metrics["mean_out"] - c.float_metrics["mean_out"]
    )
    assert c.compression > 1.0
    assert c.to_dict()["quant_bytes"] == qb.model_nbytes(q)


@pytest.mark.parametrize("bad", [float("nan"), "high", None])
def test_compare_rejects_bad_eval_results(bad) -> None:  # type: ignore[no-untyped-def]
    m = trained_cnn()
    with pytest.raises(ConfigError, match=r"metric 'acc'|non-empty dict"):
        qb.compare(m, m, lambda _m: {"acc": bad} if bad is not None else None)


def test_analyze_reports_stats_and_scheme_sqnr() -> None:
    m = trained_cnn()
    with torch.no_grad():
        m.head.weight[0, 0] = 40.0  # an outlier
    a = qb.analyze(m, cnn_batches(2), progress=False)
    rows = {r["layer"]: r for r in a.rows}
    assert set(rows) == {"stem", "dw", "pw", "head"}
    head = rows["head"]
    assert head["weight"]["absmax"] == 40.0 and head["weight"]["kurtosis"] > 3
    sq = head["weight_sqnr"]
    assert sq["int8-per-channel"] > sq["int4-per-channel"]
    assert (
        "activation" in rows["stem"] and rows["stem"]["activation_sqnr"]["int8-per-token-asym"] > 20
    )
    assert a.samples["pw"].numel() > 0
    worst = min(a.rows, key=lambda r: r["weight_sqnr"]["int4-per-channel"])["layer"]
    assert a.most_sensitive(1, "int4-per-channel") == [worst]
