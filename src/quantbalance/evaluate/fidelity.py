"""Fidelity to the float model, for when there are no labels (and accuracy/F1 when there are).

Three output families, each with its metrics (``↑`` higher is better, ``↓`` lower):

==============  ====================================================================================
family          metrics
==============  ====================================================================================
``lm``          ``perplexity`` ↓ (of the text itself, next-token), ``token_agreement`` ↑ (% of
                positions whose arg-max next token equals the float model's), ``kl`` ↓, ``cosine`` ↑
``logits``      ``top1_agreement`` ↑ (% same arg-max class), ``top5_agreement`` ↑ (% whose float
                arg-max is in the quantized top 5), ``kl`` ↓, ``cosine`` ↑; with labels ``accuracy``
                ↑ and ``f1`` ↑ (macro, %)
``embedding``   ``cosine`` ↑ (mean per sample), ``cosine_min`` ↑
==============  ====================================================================================

``kl`` is KL(float ‖ quantized) of the softmax distributions, averaged over samples (positions).
The float outputs are computed once, when the evaluation function is built, and kept unless they
would exceed :data:`MAX_REFERENCE_BYTES` (then the float model runs again at each evaluation).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from quantbalance.calibration.batch import call_model
from quantbalance.errors import ConfigError
from quantbalance.evaluate.task import EvalFn

FAMILIES = ("lm", "logits", "embedding")
#: metric -> higher is better
DIRECTION = {
    "perplexity": False, "token_agreement": True, "kl": False, "cosine": True, "cosine_min": True,
    "top1_agreement": True, "top5_agreement": True, "accuracy": True, "f1": True,
}  # fmt: skip
MAX_REFERENCE_BYTES = 512 * 2**20


def default_metric(family: str, has_labels: bool = False) -> str:
    """The metric a search protects by default for an output family.

    Args:
        family: ``lm``, ``logits`` or ``embedding``.
        has_labels: labels were given (classifiers then protect accuracy).

    Returns:
        The metric name.
    """
    if family not in FAMILIES:
        raise ConfigError(f"output family {family!r}; accepted: {', '.join(FAMILIES)}")
    if family == "lm":
        return "perplexity"
    if family == "logits":
        return "accuracy" if has_labels else "top1_agreement"
    return "cosine"


def metrics_of(family: str, has_labels: bool = False) -> tuple[str, ...]:
    """The metrics :func:`fidelity_evaluate` returns for a family.

    Args:
        family: ``lm``, ``logits`` or ``embedding``.
        has_labels: labels were given.

    Returns:
        Metric names.
    """
    if family == "lm":
        return ("perplexity", "token_agreement", "kl", "cosine")
    if family == "logits":
        extra = ("accuracy", "f1") if has_labels else ()
        return ("top1_agreement", "top5_agreement", "kl", "cosine", *extra)
    return ("cosine", "cosine_min")


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output stands for: itself, ``.logits``, ``.last_hidden_state``, or
    the first element of a tuple/list/mapping.

    Args:
        output: what the model returned.

    Returns:
        A float32 tensor.
    """
    for attr in ("logits", "last_hidden_state"):
        value = getattr(output, attr, None)
        if isinstance(value, torch.Tensor):
            return value.float()
    if isinstance(output, torch.Tensor):
        return output.float()
    if isinstance(output, Mapping) and output:
        return output_tensor(output.get("logits", next(iter(output.values()))))
    if isinstance(output, tuple | list) and output:
        return output_tensor(output[0])
    raise ConfigError(f"model output {type(output).__name__} holds no tensor to compare")


def fidelity_evaluate(
    float_model: nn.Module,
    batches: list[Any],
    family: str,
    labels: list[torch.Tensor] | None = None,
) -> EvalFn:
    """An evaluation function scoring a model's fidelity to ``float_model`` on ``batches``.

    Args:
        float_model: the reference float model.
        batches: model inputs (the batch convention of ``calibration.batch.call_model``); for
            ``lm`` each must be a mapping with ``input_ids`` (and ``attention_mask``).
        family: ``lm``, ``logits`` or ``embedding`` (see the module table).
        labels: for ``logits``: one (N,) int tensor of class indices per batch.

    Returns:
        ``evaluate(model) -> dict[str, float]`` (the float model itself scores perfect fidelity).

    Example:
        >>> net = nn.Linear(4, 3)
        >>> ev = fidelity_evaluate(net, [torch.randn(8, 4)], "logits")
        >>> ev(net)["top1_agreement"]
        100.0
    """
    if family not in FAMILIES:
        raise ConfigError(f"output family {family!r}; accepted: {', '.join(FAMILIES)}")
    if family == "lm" and not all(isinstance(b, Mapping) and "input_ids" in b for b in batches):
        raise ConfigError("perplexity needs dict batches with input_ids (tokenized text)")
    ref = _Reference(float_model, batches)

    def evaluate(model: nn.Module) -> dict[str, float]:
        acc = _Accumulator(family)
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                q = output_tensor(call_model(model, batch))
                f = ref.output(i)
                if q.shape != f.shape:
                    raise ConfigError(
                        f"model output of shape {tuple(q.shape)}, float {tuple(f.shape)}"
                    )
                acc.add(f, q, batch, labels[i] if labels is not None else None)
        return acc.result()

    return evaluate


class _Reference:
    """The float outputs: kept when small, recomputed by a private copy of the model otherwise."""

    def __init__(self, model: nn.Module, batches: list[Any]) -> None:
        self.batches = batches
        self.model: nn.Module | None = None
        self.outputs: list[torch.Tensor] = []
        total = 0
        with torch.inference_mode():
            for batch in batches:
                out = output_tensor(call_model(model, batch))
                total += out.numel() * 4
                if total > MAX_REFERENCE_BYTES:
                    self.outputs = []
                    self.model = copy.deepcopy(model).eval()  # in-place quantization-proof
                    return
                self.outputs.append(out)

    def output(self, i: int) -> torch.Tensor:
        if self.model is None:
            return self.outputs[i]
        return output_tensor(call_model(self.model, self.batches[i]))


class _Accumulator:
    def __init__(self, family: str) -> None:
        self.family = family
        self.sums: dict[str, float] = {}
        self.count = 0
        self.cos_min = 1.0
        self.nll = 0.0
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []  # (predicted, label)

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value.double().sum())

    def add(self, f: torch.Tensor, q: torch.Tensor, batch: Any, labels: Any) -> None:
        if self.family == "embedding":
            cos = nn.functional.cosine_similarity(f.flatten(1), q.flatten(1), dim=1).clamp(-1, 1)
            self._add("cosine", cos)
            self.cos_min = min(self.cos_min, float(cos.min()))
            self.count += cos.numel()
            return
        mask = None
        if self.family == "lm":
            ids, am = batch["input_ids"], batch.get("attention_mask")
            am = torch.ones_like(ids) if am is None else am
            f, q = f[:, :-1], q[:, :-1]
            mask = (am[:, 1:] * am[:, :-1]).bool()
            logp = torch.log_softmax(q, dim=-1)
            nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            self.nll += float(nll[mask].double().sum())
        elif f.dim() == 3 and isinstance(batch, Mapping) and "attention_mask" in batch:
            mask = batch["attention_mask"].bool()  # token classification: real tokens only
        f2, q2 = (f[mask], q[mask]) if mask is not None else (f.flatten(0, -2), q.flatten(0, -2))
        lf, lq = torch.log_softmax(f2, -1), torch.log_softmax(q2, -1)
        self._add("kl", (lf.exp() * (lf - lq)).sum(-1).clamp(min=0.0))
        self._add("cosine", nn.functional.cosine_similarity(f2, q2, dim=-1).clamp(-1, 1))
        top_f, top_q = f2.argmax(-1), q2.argmax(-1)
        self._add("agree", (top_f == top_q).float())
        k = min(5, q2.shape[-1])
        self._add("top5", (q2.topk(k, -1).indices == top_f.unsqueeze(-1)).any(-1).float())
        self.count += top_f.numel()
        if labels is not None:
            self.pairs.append((top_q.reshape(-1), torch.as_tensor(labels).reshape(-1)))

    def result(self) -> dict[str, float]:
        n = max(self.count, 1)
        if self.family == "embedding":
            return {"cosine": self.sums["cosine"] / n, "cosine_min": self.cos_min}
        mean = {k: v / n for k, v in self.sums.items()}
        common = {"kl": mean["kl"], "cosine": mean["cosine"]}
        if self.family == "lm":
            ppl = float(torch.tensor(self.nll / n, dtype=torch.float64).exp())
            return {"perplexity": ppl, "token_agreement": 100 * mean["agree"]} | common
        out = {"top1_agreement": 100 * mean["agree"], "top5_agreement": 100 * mean["top5"]}
        out |= common
        if self.pairs:
            out |= _accuracy_f1(self.pairs)
        return out


def _accuracy_f1(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    pred = torch.cat([p for p, _ in pairs])
    true = torch.cat([t for _, t in pairs])
    if pred.shape != true.shape:
        raise ConfigError(f"{true.numel()} labels for {pred.numel()} predictions")
    f1s = []
    for c in torch.unique(torch.cat([pred, true])).tolist():
        tp = float(((pred == c) & (true == c)).sum())
        fp, fn = float(((pred == c) & (true != c)).sum()), float(((pred != c) & (true == c)).sum())
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1e-12))
    return {
        "accuracy": 100 * float((pred == true).float().mean()),
        "f1": 100 * sum(f1s) / len(f1s),
    }
