"""The on-disk cache: hits, misses, corrupted entries, and sensitivity reruns from cache."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from quantbalance.search.cache import Cache, data_hash, fn_identity, model_hash
from quantbalance.search.sensitivity import sensitivity


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny models on a shared machine: one thread avoids OpenMP spinning against other jobs
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 4)).eval()
    return net, [torch.randn(16, 32) for _ in range(2)]


class CountingEval:
    """Fidelity to the float outputs (1 = identical); counts its calls."""

    def __init__(self, net: nn.Module, data: list[torch.Tensor]) -> None:
        with torch.no_grad():
            self.ref = [net(x) for x in data]
        self.data = data
        self.calls = 0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        self.calls += 1
        with torch.no_grad():
            err = sum(
                float((model(x) - r).pow(2).mean())
                for x, r in zip(self.data, self.ref, strict=True)
            )
        return {"fidelity": 1.0 - err}


def test_get_put_and_miss(tmp_path: Path) -> None:
    c = Cache(tmp_path)
    assert c.get("k", {"a": 1}) is None
    c.put("k", {"a": 1}, {"v": [1.0, 2.0]})
    assert c.get("k", {"a": 1}) == {"v": [1.0, 2.0]}
    assert c.get("k", {"a": 2}) is None
    assert c.hits == 1 and c.misses == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_disabled_cache_never_hits() -> None:
    c = Cache(None)
    c.put("k", {"a": 1}, 5)
    assert c.get("k", {"a": 1}) is None


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"key": {"a": 1}}), json.dumps({"key": {"a": 9}, "value": 1})],
)
def test_corrupted_entry_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    c = Cache(tmp_path)
    c.put("k", {"a": 1}, 3)
    path = c.path("k", {"a": 1})
    assert path is not None
    path.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert c.get_or("k", {"a": 1}, lambda: 4) == 4
    assert "corrupted" in caplog.text and str(path) in caplog.text
    assert c.get("k", {"a": 1}) == 4  # rewritten


def test_hashes_follow_the_content() -> None:
    net, data = tiny()
    h = model_hash(net)
    assert h == model_hash(net)
    with torch.no_grad():
        net[0].weight[0, 0] += 1e-3
    assert model_hash(net) != h
    assert data_hash(data) == data_hash([d.clone() for d in data])
    assert data_hash(data) != data_hash(data[:1])
    assert fn_identity(tiny) != fn_identity(tiny, extra={"n": 1})


def test_sensitivity_rerun_comes_from_the_cache(tmp_path: Path) -> None:
    net, data = tiny()
    ev = CountingEval(net, data)
    kw = {"cache_dir": tmp_path, "metric": "fidelity", "progress": False}
    first = sensitivity(net, (data, ev), **kw)
    assert ev.calls == 1 + 2 * 4  # float reference + 2 layers x 4 candidates
    again = CountingEval(net, data)  # a fresh, equal evaluator (its call counter is data too)
    second = sensitivity(net, (data, again), **kw)
    assert again.calls == 1  # the float reference is measured in every run
    assert second.entries == first.entries


def test_corrupted_sensitivity_entry_is_recomputed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    net, data = tiny()
    ev = CountingEval(net, data)
    kw = {"cache_dir": tmp_path, "metric": "fidelity", "progress": False}
    first = sensitivity(net, (data, ev), **kw)
    victim = sorted((tmp_path / "sens").glob("*.json"))[0]
    victim.write_text(victim.read_text()[:20])
    ev2 = CountingEval(net, data)
    with caplog.at_level(logging.WARNING):
        again = sensitivity(net, (data, ev2), **kw)
    assert ev2.calls == 1 + 1  # the reference, and the corrupted entry
    assert "corrupted" in caplog.text
    assert again.entries == first.entries


def test_screening_measures_only_k_pairs(tmp_path: Path) -> None:
    net, data = tiny()
    ev = CountingEval(net, data)
    table = sensitivity(
        net, (data, ev), cache_dir=tmp_path, metric="fidelity", measure=3, progress=False
    )
    assert ev.calls == 1 + 3
    entries = [e for layer in table.entries.values() for k, e in layer.items() if k != "float"]
    assert sum(e["measured"] for e in entries) == 3
    assert all(e["fisher_db"] is not None and e["sqnr_db"] is not None for e in entries)
    assert all(table.drop(n, k) >= 0 for n in table.layers for k in table.entries[n])


def test_an_unwritable_cache_warns_once_and_the_work_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    cache_mod = sys.modules[Cache.__module__]

    def full_disk(path: object, text: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod, "atomic_write_text", full_disk)
    c = Cache(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert c.get_or("k", {"a": 1}, lambda: 5) == 5
        assert c.get_or("k", {"a": 2}, lambda: 6) == 6
    assert caplog.text.count("cannot write the cache") == 1
    assert c.read_only and c.get("k", {"a": 1}) is None
