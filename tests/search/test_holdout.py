"""``search.holdout.split_task``: disjoint search / held-out / sensitivity splits."""

from __future__ import annotations

import pytest

from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.search.holdout import split_task


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
