"""``tasks.build_evaluate``: a task's own metric on another slice of its evaluation data."""

from __future__ import annotations

import copy

import pytest
import torch

from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.tasks import Task, build_evaluate, load


def _load(name: str, **kwargs) -> Task:
    try:
        return load(name, **kwargs)
    except AssetMissingError as exc:  # pragma: no cover - assets come with `make install`
        pytest.skip(str(exc))


def _perturbed(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.add_(scale * p.std() * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def minilm():
    return _load("minilm", n_eval=20, n_calib=20, seq_len=32, batch_size=8)


def test_minilm_slice_equals_the_loader_on_the_same_sentences(minilm: Task) -> None:
    fn = build_evaluate(minilm, slice(0, 20))
    noisy = _perturbed(minilm.model)
    assert fn(noisy) == pytest.approx(minilm.evaluate(noisy), abs=1e-6)
    assert fn(minilm.model)["cosine_mean"] == pytest.approx(1.0, abs=1e-6)


def test_minilm_other_slice_measures_other_sentences(minilm: Task) -> None:
    noisy = _perturbed(minilm.model)
    a = build_evaluate(minilm, slice(0, 20))(noisy)["cosine_mean"]
    b = build_evaluate(minilm, slice(480, 500))(noisy)["cosine_mean"]
    assert a < 1.0 and b < 1.0 and a != b


@pytest.mark.parametrize("bad", [slice(0, 0), slice(490, 510), slice(-5, 10), slice(0, 10, 2)])
def test_minilm_bad_slices_are_refused(minilm: Task, bad: slice) -> None:
    with pytest.raises(ConfigError, match="eval_slice"):
        build_evaluate(minilm, bad)


def test_unknown_task_is_refused(minilm: Task) -> None:
    other = copy.copy(minilm)
    other.name = "mine"
    with pytest.raises(ConfigError, match="accepted: minilm, fashion, smollm"):
        build_evaluate(other, slice(0, 4))


def test_fashion_slice_matches_the_loader() -> None:
    task = _load_fashion(n_test=300)
    fn = build_evaluate(task, slice(0, 300))
    noisy = _perturbed(task.model, 0.3)
    assert fn(noisy) == task.evaluate(noisy)
    other = build_evaluate(task, slice(9700, 10000))(task.model)
    assert other["agreement"] == 100.0 and 50.0 < other["accuracy"] <= 100.0
    with pytest.raises(ConfigError, match="eval_slice"):
        build_evaluate(task, slice(9000, 10001))


def _load_fashion(**kwargs) -> Task:
    try:
        return load("fashion", n_calib=64, **kwargs)
    except (AssetMissingError, FileNotFoundError) as exc:  # pragma: no cover
        pytest.skip(str(exc))


def test_smollm_slice_matches_the_loader_and_avoids_calibration() -> None:
    task = _load("smollm", n_windows=2, window=64, n_calib=2, calib_window=64)
    assert task.info["calib_tokens"] == (128, 256)
    same = build_evaluate(task, slice(0, 2))(task.model)["perplexity"]
    assert same == pytest.approx(task.reference["perplexity"], rel=1e-6)
    later = build_evaluate(task, slice(4, 6))(task.model)["perplexity"]
    assert 1.0 < later < 1000.0 and later != same
    with pytest.raises(ConfigError, match=r"overlaps the calibration tokens 128\.\.256"):
        build_evaluate(task, slice(3, 5))
    with pytest.raises(ConfigError, match="accepted 0 <= start < stop"):
        build_evaluate(task, slice(4, 10**6))


def test_minilm_float_model_is_embedded_once_when_evaluated_first(
    minilm: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantbalance.tasks import minilm as mt

    calls = []
    real = mt.embed_batches

    def counting(model, batches):  # type: ignore[no-untyped-def]
        calls.append(model)
        return real(model, batches)

    monkeypatch.setattr(mt, "embed_batches", counting)
    fn = build_evaluate(minilm, slice(100, 120))
    first = fn(minilm.model)
    assert len(calls) == 1 and first["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    noisy = _perturbed(minilm.model)
    assert fn(noisy)["cosine_mean"] < 0.9999 and len(calls) == 2
    fresh = build_evaluate(minilm, slice(100, 120))
    assert fresh(noisy) == fn(noisy)  # a changed model still gets the float reference
    assert len(calls) == 5
