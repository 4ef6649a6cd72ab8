"""Every public function, each argument replaced by wrong values: a QuantBalanceError or a result.

A catalogue of wrong values (wrong types, empty, NaN, negative, a model where data goes, ...)
is tried on every parameter of every public entry point, one at a time; anything other than
success or a ``QuantBalanceError`` (``TypeError``, ``AttributeError``, ``KeyError``, an
``OSError`` of a path) reaching the user fails the test. Exceptions a user's own callback
raises (an eval or loss function that breaks) are the user's and are not provoked here.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import quantbalance as qb


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.disable(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)
    torch.set_num_threads(n)


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


CALIB = [torch.randn(4, 8, generator=torch.Generator().manual_seed(1)) for _ in range(2)]


def ev(m: nn.Module) -> dict[str, float]:
    with torch.no_grad():
        return {"s": float(m(CALIB[0]).sum())}


WRONG: list[Any] = [
    None, 0, -1, 3, 1.5, float("nan"), float("inf"), -5.0, True, "", "nonsense", "w8a8", b"x",
    [], [1, 2], (1,), {}, {"a": 1}, {1: 2}, object(), torch.randn(3),
    torch.tensor([float("nan")]), nn.ReLU(), [torch.randn(4, 3)], [torch.randn(4, 8), "x"],
    "/dev/null/x", ".",
]  # fmt: skip


def cases(tmp: Path) -> dict[str, tuple[Callable[..., Any], Callable[[], dict[str, Any]]]]:
    q = qb.quantize(net(), "w8a8", CALIB, progress=False)
    ckpt = qb.save(q, tmp / "q.safetensors")
    return {
        "quantize": (qb.quantize, lambda: {"model": net(), "plan": "w8a8", "calib_data": CALIB,
                     "algorithm": None, "bitwidths": None, "progress": False, "inplace": False}),
        "quantize_dynamic": (qb.quantize_dynamic, lambda: {"model": net(), "layer_types": None,
                             "dtype": "int8"}),
        "analyze": (qb.analyze, lambda: {"model": net(), "calib_data": CALIB, "progress": False}),
        "compare": (qb.compare, lambda: {"float_model": net(), "qmodel": q,
                    "task_or_eval_fn": ev, "batches": CALIB}),
        "model_nbytes": (qb.model_nbytes, lambda: {"model": net()}),
        "sqnr": (qb.sqnr, lambda: {"reference": torch.ones(5), "approx": torch.zeros(5)}),
        "quantize_tensor": (qb.quantize_tensor, lambda: {"x": torch.randn(4, 8),
                            "scheme": qb.Scheme(8)}),
        "fake_quantize": (qb.fake_quantize, lambda: {"x": torch.randn(4, 8),
                          "scheme": qb.Scheme(8)}),
        "preset": (qb.preset, lambda: {"name": "w8a8"}),
        "save": (qb.save, lambda: {"qmodel": q, "path": tmp / "o.safetensors"}),
        "load": (qb.load, lambda: {"path": ckpt, "model": net()}),
        "Plan.load": (qb.Plan.load, lambda: {"path": tmp / "p.json"}),
        "Plan.model_validate": (qb.Plan.model_validate, lambda: {"obj": {"layers": {}}}),
        "export_onnx": (qb.export_onnx, lambda: {"qmodel": q, "example_inputs": CALIB[0],
                        "path": tmp / "m.onnx"}),
        "sensitivity": (qb.sensitivity, lambda: {"model": net(), "source": (CALIB, ev),
                        "candidates": [None], "layers": None, "cache_dir": None, "metric": "s",
                        "progress": False}),
        "search": (qb.search, lambda: {"model": net(), "source": (CALIB, ev),
                   "budget": qb.Budget(max_drop=0.5), "candidates": None, "cache_dir": None,
                   "metric": "s", "progress": False, "presets": ["int8-weight"],
                   "front_evals": 1, "max_evals": 1, "measure": True, "config": None}),
        "qat": (qb.qat, lambda: {"model": net(), "plan": "int8-weight",
                "train_data": [(CALIB[0], torch.randn(4, 4))], "loss_fn": nn.MSELoss(),
                "steps": 1, "progress": False}),
    }  # fmt: skip


CALLBACKS = {("qat", "loss_fn")}  # called by us with (output, target): the user's code
#: Each value that gets past the checks costs a torch.export (seconds): a smaller set.
SLOW = {
    "export_onnx": [None, 0, "", ".", "/dev/null/x", b"x", [], {}, torch.randn(3), nn.ReLU(),
                    [torch.randn(4, 3)], {"a": 1}],
}  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["quantize", "quantize_dynamic", "analyze", "compare", "model_nbytes", "sqnr",
     "quantize_tensor", "fake_quantize", "preset", "save", "load", "Plan.load",
     "Plan.model_validate", "export_onnx", "sensitivity", "search", "qat"],
)  # fmt: skip
def test_wrong_arguments_raise_quantbalance_errors(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a path argument such as "." or "w8a8" stays in here
    qb.preset("w8a8").save(tmp_path / "p.json")
    fn, make = cases(tmp_path)[name]
    fn(**make())  # the baseline works
    leaks = []
    for arg in make():
        for value in SLOW.get(name, WRONG):
            if (name, arg) in CALLBACKS and callable(value):
                continue
            kwargs = make()
            kwargs[arg] = value
            try:
                fn(**kwargs)
            except qb.QuantBalanceError as e:
                assert str(e), (arg, value)
            except Exception as e:
                leaks.append(f"{name}({arg}={value!r:.40}): {type(e).__name__}: {str(e)[:120]}")
    assert not leaks, "\n".join(leaks)
    assert os.getcwd() == str(tmp_path)


def test_argument_errors_say_what_to_write() -> None:
    with pytest.raises(qb.ConfigError, match=r"invalid SearchConfig:\n  max_evals='8': Input "
                       r"should be a valid integer\n  allowed fields: algorithm, "):  # fmt: skip
        qb.search(net(), (CALIB, ev), qb.Budget(max_drop=0.1), max_evals="8")
    with pytest.raises(qb.ConfigError, match=r"unknown field 'max_eval' \(value 8\)"):
        qb.search(net(), (CALIB, ev), qb.Budget(max_drop=0.1), max_eval=8)
    with pytest.raises(qb.ArgumentError, match=r"budget=None is a NoneType; expected a Budget"):
        qb.search(net(), (CALIB, ev), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # an ArgumentError is also a TypeError
        qb.quantize(net(), progress="yes")  # type: ignore[arg-type]
    with pytest.raises(qb.ArgumentError, match=r"quantize\(\): got an unexpected keyword"):
        qb.quantize(net(), plann="w8a8")  # type: ignore[call-arg]
