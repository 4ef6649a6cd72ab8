"""Held-out splits: generic ``search.holdout.split_eval`` and the bundled tasks' ``split_task``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.evaluate.task import Task
from quantbalance.search.holdout import split_eval
from quantbalance.tasks.splits import split_task


def _split(name: str, **kwargs):
    try:
        return split_task(name, **kwargs)
    except AssetMissingError as exc:  # pragma: no cover - assets come with `make install`
        pytest.skip(str(exc))


def test_minilm_splits_are_disjoint_and_share_the_model() -> None:
    sp = _split("minilm", n_sensitivity=4, n_eval=8, seq_len=32, n_calib=8)
    assert sp.search.info["sentences"] == [0, 8]
    assert sp.holdout.info["sentences"] == [492, 500]
    assert sp.sensitivity is not None and sp.sensitivity.info["sentences"] == [0, 4]
    assert sp.holdout.model is sp.search.model
    assert sp.holdout.evaluate(sp.holdout.model)["cosine_mean"] == pytest.approx(1.0, abs=1e-6)


def test_smollm_holdout_follows_the_calibration_windows() -> None:
    sp = _split("smollm", n_sensitivity=1, n_eval=2, window=64, n_calib=3, calib_window=64)
    # search windows 0-1 = tokens 0..128; calibration tokens 128..320; held out: windows 5-6
    assert sp.search.info["windows"] == [0, 2]
    assert sp.search.info["calib_tokens"] == (128, 320)
    assert sp.holdout.info["windows"] == [5, 7]
    assert sp.holdout.name == "smollm[holdout]" and sp.sensitivity is not None
    ppl = sp.holdout.evaluate(sp.holdout.model)["perplexity"]
    assert 1.0 < ppl < 1000.0 and ppl != pytest.approx(sp.search.reference["perplexity"])


def test_bad_sizes_and_unknown_tasks_are_refused() -> None:
    with pytest.raises(ConfigError, match="accepted: minilm, fashion, smollm"):
        split_task("resnet")
    with pytest.raises(ConfigError, match=r"accepted 1\.\.250"):
        split_task("minilm", n_eval=300)
    with pytest.raises(ConfigError, match="n_sensitivity=9"):
        _split("minilm", n_sensitivity=9, n_eval=8, seq_len=32, n_calib=8)


def _toy_task() -> Task:
    # Samples are the integers 0..99: the metric is the mean of the samples a slice holds, so
    # each split's figure tells which samples it saw.
    def slicer(s: slice):
        return lambda model: {"mean": float(torch.arange(100.0)[s].mean())}

    return Task("toy", nn.Linear(1, 1), [], None, slicer(slice(0, 10)), "mean",
                eval_slicer=slicer, n_eval_samples=100)  # fmt: skip


def test_split_eval_is_generic_and_disjoint() -> None:
    sp = split_eval(_toy_task(), 10, 90, n_sensitivity=4)
    assert sp.search.reference == {"mean": 4.5}
    assert sp.holdout.reference == {"mean": 94.5}
    assert sp.sensitivity is not None and sp.sensitivity.reference == {"mean": 1.5}
    assert sp.holdout.info == {"split": "holdout", "samples": [90, 100]}


def test_split_eval_refuses_overlap_overflow_and_slicerless_tasks() -> None:
    with pytest.raises(ConfigError, match="overlap the search split"):
        split_eval(_toy_task(), 10, 5)
    with pytest.raises(ConfigError, match="exceed the 100 evaluation samples"):
        split_eval(_toy_task(), 10, 95)
    bare = _toy_task()
    bare.eval_slicer = None
    with pytest.raises(ConfigError, match="no eval_slicer"):
        split_eval(bare, 10, 90)
