"""SmoothQuant: exact in float, lower w8a8 error on outlier channels, BERT groups as data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.algorithms.smoothquant import (
    ScaledActivation,
    SmoothInput,
    smooth_model,
    smooth_scales,
    smoothquant_groups,
)
from quantbalance.errors import CalibrationError, UnsupportedError
from tiny_bert import bert_batches, tiny_bert


class PreNorm(nn.Module):
    """A pre-norm MLP whose LayerNorm puts large outliers on two channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 8)
        with torch.no_grad():
            self.norm.weight[:2] = 40.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.norm(x))))


def batches(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 32, generator=g) for _ in range(n)]


def test_smooth_scales_formula() -> None:
    s = smooth_scales(torch.tensor([16.0, 1.0, 0.0]), [torch.tensor([[1.0, 4.0, 1.0]])], 0.5)
    torch.testing.assert_close(s, torch.tensor([4.0, 0.5, 1.0]))


def test_prenorm_float_identity_and_lower_w8a8_error() -> None:
    m = PreNorm().eval()
    x = torch.cat(batches())
    ref = m(x)
    sm = copy.deepcopy(m)
    chosen = smooth_model(sm, batches(), alpha=0.5)
    assert chosen == {"norm": 0.5}  # traced fallback: LayerNorm -> fc1
    torch.testing.assert_close(sm(x), ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        e_rtn = (qb.quantize(m, "w8a8", batches(), progress=False)(x) - ref).pow(2).mean()
        q = qb.quantize(m, "w8a8", batches(), algorithm="smoothquant", progress=False)
        e_sq = (q(x) - ref).pow(2).mean()
    assert e_sq < 0.5 * e_rtn
    assert q.qb_info.algorithm_log["smoothquant"]["alpha"]["norm"] is not None


def test_bert_groups_are_data_and_smoothing_is_exact() -> None:
    bert = tiny_bert()
    kinds = {(g.producer.split("layer.0.")[-1], g.kind) for g in smoothquant_groups(bert)}
    assert {
        ("attention.self.value", "linear"),
        ("attention.self", "input"),
        ("intermediate", "input"),
        ("intermediate.intermediate_act_fn", "act"),
    } <= kinds
    data = bert_batches()
    ref = bert(**data[0]).last_hidden_state
    sm = copy.deepcopy(bert)
    smooth_model(sm, data, alpha=0.8)
    assert isinstance(sm.encoder.layer[0].intermediate.intermediate_act_fn, ScaledActivation)
    assert isinstance(sm.encoder.layer[1].attention.self, SmoothInput)
    assert "encoder.layer.1.attention.self.query" in dict(sm.named_modules())  # names kept
    torch.testing.assert_close(sm(**data[0]).last_hidden_state, ref, rtol=1e-4, atol=1e-4)


def test_missing_data_names_the_algorithm() -> None:
    with pytest.raises(CalibrationError, match="smoothquant"):
        qb.quantize(PreNorm(), "int8-weight", algorithm="smoothquant", progress=False)


def test_unpairable_model_says_which_layers() -> None:
    m = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UnsupportedError, match="could not pair layers 0"):
        qb.quantize(m, "w8a8", [torch.randn(3, 4)], algorithm="smoothquant", progress=False)


def test_alpha_from_plan_algorithm_args_and_bad_alpha() -> None:
    from quantbalance.algorithms.smoothquant import smoothquant_options
    from quantbalance.errors import ConfigError

    bert = tiny_bert()
    w8a8 = qb.preset("w8a8").layers["re:.*"]
    spec = w8a8.model_copy(update={"algorithm_args": {"smoothquant": {"alpha": 0.85}}})
    plan = qb.Plan(layers={"re:.*": spec})
    q = qb.quantize(bert, plan, bert_batches(), "smoothquant", progress=False)
    alphas = q.qb_info.algorithm_log["smoothquant"]["alpha"]
    assert alphas and set(alphas.values()) == {0.85}
    with smoothquant_options(alpha=0.3):
        q = qb.quantize(bert, "w8a8", bert_batches(), "smoothquant", progress=False)
    assert set(q.qb_info.algorithm_log["smoothquant"]["alpha"].values()) == {0.3}
    with smoothquant_options(alpha=0.0):  # a strength of 0 (no migration), not "auto"
        q = qb.quantize(bert, "w8a8", bert_batches(), "smoothquant", progress=False)
    assert set(q.qb_info.algorithm_log["smoothquant"]["alpha"].values()) == {0.0}
    with pytest.raises(ConfigError, match="alpha"):
        qb.LayerSpec(**{**w8a8.model_dump(), "algorithm_args": {"smoothquant": {"alpha": 2}}})
