"""Nothing left float silently: coverage in the log, qb_info, compare, checkpoints; strict."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy import load, save
from quantbalance.errors import FloatLayerError
from quantbalance.transform import coverage


class WithLSTM(nn.Module):
    """Embedding -> LSTM (no quantized form) -> Linear head; a LayerNorm (not a weight layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 8)  # 240 weights
        self.rnn = nn.LSTM(8, 8, batch_first=True)  # 2 x (32, 8) = 512 weights
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 30)  # 240 weights

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(idx))
        return self.head(self.norm(h))


def lstm_model() -> WithLSTM:
    torch.manual_seed(0)
    return WithLSTM().eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(1))


def test_layer_without_quantized_form_is_announced(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="quantbalance.quantize"):
        q = qb.quantize(lstm_model(), "int8-weight", progress=False)
    line = "quantized 2 of 3 weight layers (48.4 % of weights)"  # (240 + 240) / 992
    assert q.qb_info.summary == line
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert line in msg and "1 weight layer(s) left float with no quantized form" in msg
    assert "(51.6 % of weights)" in msg and "rnn: LSTM has no quantized module" in msg
    assert q.qb_info.coverage.left_float() == {"rnn": q.qb_info.coverage.reasons["rnn"]}
    assert q.qb_info.coverage.by_plan == {}


def test_layers_skipped_by_the_plan_are_listed_apart_and_only_at_info(caplog) -> None:
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    plan = qb.Plan(layers={"re:.*": qb.LayerSpec(weight=qb.Scheme(8))}, skip=["2"])
    with caplog.at_level(logging.INFO, logger="quantbalance.quantize"):
        q = qb.quantize(m, plan, progress=False, strict=True)  # by plan: strict does not mind
    assert q.qb_info.summary == "quantized 1 of 2 weight layers (66.7 % of weights)"
    assert q.qb_info.coverage.left_float() == {"2": "by plan"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("1 weight layer(s) float by plan (33.3 % of weights): 2" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_strict_raises_before_any_work_and_names_the_layers() -> None:
    m = lstm_model()
    with pytest.raises(FloatLayerError, match=r"1 weight layer\(s\) would be left float: rnn \("):
        qb.quantize(m, "int8-weight", progress=False, strict=True)
    assert isinstance(m.head, nn.Linear)
    m2 = nn.Sequential(nn.Conv1d(4, 4, 1), nn.ConvTranspose1d(4, 4, 3, groups=2))
    with pytest.raises(
        FloatLayerError, match=r"left float: 1 \(transposed convolution with groups=2"
    ):
        qb.quantize(m2, "int8-weight", progress=False, strict=True)


def test_compare_and_checkpoint_carry_the_coverage(tmp_path) -> None:
    m = lstm_model()
    q = qb.quantize(m, "int8-weight", progress=False)

    def agree(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            same = model(tokens()).argmax(-1) == m(tokens()).argmax(-1)
        return {"top1": float(same.float().mean())}

    c = qb.compare(m, q, agree, batches=[tokens()])
    assert c.coverage == "quantized 2 of 3 weight layers (48.4 % of weights)"
    assert c.to_dict()["left_float"] == {"rnn": q.qb_info.coverage.reasons["rnn"]}
    r = load(save(q, tmp_path / "q.safetensors"), m)
    assert r.qb_info.summary == q.qb_info.summary
    assert r.qb_info.coverage == q.qb_info.coverage
    assert coverage(r).summary() == q.qb_info.summary  # also computable from the model alone


def test_coverage_of_a_float_model_counts_every_weight_layer() -> None:
    cov = coverage(lstm_model())
    assert cov.summary() == "quantized 0 of 3 weight layers (0.0 % of weights)"
    assert cov.by_plan == {"emb": 240, "head": 240} and cov.unsupported == {"rnn": 512}
