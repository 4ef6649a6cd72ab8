"""Built-in fidelity metrics (KL, agreement, cosine, perplexity) and accuracy/F1 with labels."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.evaluate import fidelity
from quantbalance.evaluate.fidelity import default_metric, fidelity_evaluate


class Fixed(nn.Module):
    """Returns the logits it was given, whatever the input (a stand-in float/quantized model)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor | None = None, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_logits_metrics_match_hand_computed_values() -> None:
    f = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    q = torch.tensor([[1.0, 2.0, 0.0], [0.0, 3.0, 1.5]])
    got = fidelity_evaluate(Fixed(f), [torch.zeros(2)], "logits")(Fixed(q))
    pf, pq = f.softmax(-1), q.softmax(-1)
    kl = float((pf * (pf.log() - pq.log())).sum(-1).mean())
    cos = float(nn.functional.cosine_similarity(f, q, dim=-1).mean())
    assert got["kl"] == pytest.approx(kl, rel=1e-6)
    assert got["cosine"] == pytest.approx(cos, rel=1e-6)
    assert got["top1_agreement"] == 50.0 and got["top5_agreement"] == 100.0
    same = fidelity_evaluate(Fixed(f), [torch.zeros(2)], "logits")(Fixed(f))
    assert same["kl"] == 0.0 and same["top1_agreement"] == 100.0


def test_accuracy_and_macro_f1_with_labels() -> None:
    q = torch.eye(3)[[0, 0, 1, 2, 2, 2]] * 5  # predictions 0 0 1 2 2 2
    labels = torch.tensor([0, 1, 1, 2, 2, 0])
    got = fidelity_evaluate(Fixed(q), [torch.zeros(6)], "logits", [labels])(Fixed(q))
    assert got["accuracy"] == pytest.approx(400 / 6)
    # per class F1: c0 tp1 fp1 fn1 -> .5; c1 tp1 fp0 fn1 -> 2/3; c2 tp2 fp1 fn0 -> .8
    assert got["f1"] == pytest.approx(100 * (0.5 + 2 / 3 + 0.8) / 3)


def test_lm_perplexity_and_token_agreement_skip_padding() -> None:
    torch.manual_seed(0)
    f = torch.randn(1, 4, 5)
    q = f.clone()
    q[0, 1] = q[0, 1].flip(-1)  # position 1 predicts differently
    batch = {
        "input_ids": torch.tensor([[1, 2, 3, 4]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0]]),
    }
    got = fidelity_evaluate(Fixed(f), [batch], "lm")(Fixed(q))
    # next-token positions 0 and 1 (position 2 predicts a padding token): targets 2, 3
    nll = nn.functional.cross_entropy(q[0, :2], torch.tensor([2, 3]))
    assert got["perplexity"] == pytest.approx(math.exp(float(nll)), rel=1e-6)
    assert got["token_agreement"] == (50.0 if f[0, 1].argmax() != q[0, 1].argmax() else 100.0)
    with pytest.raises(ConfigError, match="input_ids"):
        fidelity_evaluate(Fixed(f), [torch.zeros(1)], "lm")


def test_embedding_cosine_and_recomputed_reference(monkeypatch) -> None:
    f = nn.functional.normalize(torch.randn(4, 8), dim=1)
    q = f.clone()
    q[0] = -q[0]
    kept = fidelity_evaluate(Fixed(f), [torch.zeros(4)], "embedding")(Fixed(q))
    assert kept["cosine"] == pytest.approx(0.5, abs=1e-6)
    assert kept["cosine_min"] == pytest.approx(-1.0)
    monkeypatch.setattr(fidelity, "MAX_REFERENCE_BYTES", 16)  # too big to keep: rerun float
    assert fidelity_evaluate(Fixed(f), [torch.zeros(4)], "embedding")(Fixed(q)) == kept


def test_default_metric_by_family() -> None:
    assert default_metric("lm") == "perplexity"
    assert default_metric("logits") == "top1_agreement"
    assert default_metric("logits", has_labels=True) == "accuracy"
    assert default_metric("embedding") == "cosine"
    with pytest.raises(ConfigError, match="accepted: lm, logits, embedding"):
        default_metric("audio")
