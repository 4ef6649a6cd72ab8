"""A small MLP, its data and eval function, and a fixed latency engine, for the cache tests.

Also runnable as a script (``python trust_net.py CACHE_DIR OUT_JSON [SCALE]``): one search whose
result (Plan, reference, sensitivity, cache counts) is written as JSON; the kill / resume and
concurrency tests run it in subprocesses.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.plan import LayerSpec
from quantbalance.search import Budget, SearchResult, search

PRESETS = ["int8-weight", "w4-g128"]


class FixedEngine:
    """Latency proportional to weight size: deterministic, nothing timed."""

    name = "fixed"

    def latency_ms(
        self, layer_name: str, module: nn.Module, spec: LayerSpec | None, shape: tuple[int, ...]
    ) -> float:
        bits = 32 if spec is None or spec.weight is None else spec.weight.bits
        return module.weight.numel() * bits * 1e-6

    def model_latency_ms(self, model: nn.Module, example_inputs: object) -> float:
        return sum(m.weight.numel() * 32e-6 for m in model.modules() if isinstance(m, nn.Linear))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64),
        nn.ReLU(), nn.Linear(64, 4),
    )  # fmt: skip
    with torch.no_grad():
        net[6].weight[:, 5] *= 30  # an outlier column: the last layer is sensitive to 4 bits
    return net.eval()


def data() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Calibration batches, evaluation inputs and labels (the float model's own argmax)."""
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(32, 16, generator=g) for _ in range(2)]
    x = torch.randn(256, 16, generator=g)
    with torch.no_grad():
        y = mlp()(x).argmax(1)
    return calib, x, y


def make_evaluate(x: torch.Tensor, y: torch.Tensor) -> Any:
    """The user's eval function: a smooth score of the labels (changes with every weight)."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logp = torch.log_softmax(model(x), dim=1)
        return {"score": float(logp.gather(1, y[:, None]).mean())}

    return evaluate


def run(cache_dir: Any, scale: float = 1.0, **kw: Any) -> SearchResult:
    """One search on the MLP with ``evaluate``'s inputs multiplied by ``scale``."""
    calib, x, y = data()
    ev = make_evaluate(x * scale, y)
    args: dict[str, Any] = {
        "presets": PRESETS,
        "front_evals": 1,
        "max_evals": 3,
        "progress": False,
        "latency_model": FixedEngine(),
        "metric": "score",
        "cache_dir": cache_dir,
        **kw,
    }
    return search(mlp(), (calib, ev), Budget(max_drop=0.05), **args)


def summary(r: SearchResult) -> dict[str, Any]:
    """What two equal runs must agree on, and the cache counts."""
    return {
        "plan": r.plan.model_dump(mode="json"),
        "reference": r.reference,
        "chosen": r.chosen.metrics,
        "sensitivity": r.sensitivity.entries,
        "cache": r.info["cache"],
    }


def _slow_puts(seconds: float) -> None:
    """Sleep after every cache write (the kill test needs time to strike mid-sensitivity).

    Outside the eval function, so the evaluation (and its cache keys) stay those of ``run``.
    """
    import time

    from quantbalance.search.cache import Cache

    put = Cache.put

    def slow(self: Cache, kind: str, key: Any, value: Any) -> Any:
        out = put(self, kind, key, value)
        time.sleep(seconds)
        return out

    Cache.put = slow  # type: ignore[method-assign]


if __name__ == "__main__":
    import os

    torch.set_num_threads(1)
    if os.environ.get("QB_TEST_SLOW_PUT"):
        _slow_puts(float(os.environ["QB_TEST_SLOW_PUT"]))
    import trust_net  # the module, not __main__: the eval function's identity names its module

    res = trust_net.run(sys.argv[1], float(sys.argv[3]) if len(sys.argv) > 3 else 1.0)
    Path(sys.argv[2]).write_text(json.dumps(trust_net.summary(res), default=str))
