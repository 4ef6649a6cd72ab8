"""The cache cannot lie: a changed evaluation gets no cached figures, an equal one gets all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from trust_net import data, make_evaluate, mlp, run, summary

from quantbalance.search.fingerprint import eval_fingerprint
from quantbalance.search.sensitivity import sensitivity


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _measured(r: dict) -> dict[str, int]:
    kinds = r["cache"]["by_kind"]
    return {k: kinds.get(k, {}).get("hits", 0) for k in ("eval", "sens")}


def test_changed_evaluation_data_gets_no_cached_figures(tmp_path: Path) -> None:
    first = summary(run(tmp_path))
    assert _measured(first) == {"eval": 0, "sens": 0}
    scaled = summary(run(tmp_path, scale=50.0))  # the experiment: inputs x 50
    assert _measured(scaled) == {"eval": 0, "sens": 0}
    assert "closure variable x" in scaled["cache"]["text"]  # says what changed
    truth = summary(run(None, scale=50.0))
    assert truth["cache"]["hits"] == 0
    for k in ("plan", "reference", "chosen", "sensitivity"):
        assert scaled[k] == truth[k], k
    assert scaled["reference"] != first["reference"]
    again = summary(run(tmp_path, scale=50.0))  # the same evaluation again: all reused
    by_kind = again["cache"]["by_kind"]
    assert by_kind["sens"]["misses"] == 0 and by_kind["sens"]["hits"] > 0
    assert by_kind["eval"]["misses"] == 0 and by_kind["eval"]["hits"] > 0
    n = by_kind["sens"]["hits"] + by_kind["eval"]["hits"]
    assert f"cache: {n} metric measurements reused, 0 made in this run" in again["cache"]["text"]
    for k in ("plan", "reference", "chosen", "sensitivity"):
        assert again[k] == truth[k], k
    json.dumps(again)


def test_changed_evaluation_code_gets_no_cached_figures(tmp_path: Path) -> None:
    net = mlp()
    calib, x, _ = data()
    head = "import torch\ndef evaluate(m):\n    with torch.no_grad():\n"
    src_a = head + "        return {'s': float(m(X).sum())}\n"
    src_b = head + "        return {'s': float(m(X).abs().sum())}\n"
    kw = {"cache_dir": tmp_path, "metric": "s", "progress": False}
    written = []
    for src in (src_a, src_a, src_b):
        ns = {"X": x, "__name__": "user_module"}
        exec(compile(src, "user_module.py", "exec"), ns)  # same module and name, other code
        t = sensitivity(net, (calib, ns["evaluate"]), **kw)
        assert t.reference["s"] == ns["evaluate"](net)["s"]
        first = next(iter(t.entries))
        written.append(len(list((tmp_path / "sens").glob("*.json"))))
    per_run = 4 * 4  # 4 layers x 4 candidates
    assert written == [per_run, per_run, 2 * per_run]  # a rerun reuses, new code measures anew
    assert t.entries[first]["int8-weight"]["metrics"]["s"] > 0  # |.| sums: the new code's figure


def test_fingerprint_follows_code_data_and_globals() -> None:
    x = torch.ones(4)
    f = make_evaluate(x, torch.zeros(4, dtype=torch.long))
    a = eval_fingerprint(f)
    assert a.digest == eval_fingerprint(f).digest  # stable
    x[0] = 2.0  # data the closure holds, changed in place
    b = eval_fingerprint(f)
    assert b.digest != a.digest
    assert [k for k in a.parts if a.parts[k] != b.parts[k]] == ["closure variable x"]
    assert not a.opaque

    class Scorer:
        def __init__(self, k: float) -> None:
            self.k = k

        def __call__(self, m: object) -> dict[str, float]:
            return {"v": self.k}

    assert eval_fingerprint(Scorer(1.0)).digest == eval_fingerprint(Scorer(1.0)).digest
    assert eval_fingerprint(Scorer(1.0)).digest != eval_fingerprint(Scorer(2.0)).digest
    import numpy as np

    arr = np.arange(6.0)
    g = lambda m: {"v": float(arr.sum())}  # noqa: E731 - a global-like closure over numpy
    d = eval_fingerprint(g).digest
    arr[2] = 50
    assert eval_fingerprint(g).digest != d


def test_opaque_parts_are_said() -> None:
    import threading

    lock = threading.Lock()  # no attributes to look into

    def ev(m: object) -> dict[str, float]:
        with lock:
            return {"v": 1.0}

    fp = eval_fingerprint(ev)
    assert any("lock" in o for o in fp.opaque), fp.opaque


def test_declared_memos_are_left_out() -> None:
    x = torch.arange(4.0)
    memo: dict[str, float] = {}

    def ev(m: object) -> dict[str, float]:
        if "s" not in memo:
            memo["s"] = float(x.sum())
        return {"v": memo["s"]}

    plain = eval_fingerprint(ev).digest
    ev.qb_fingerprint_ignore = ("memo",)  # type: ignore[attr-defined]
    before = eval_fingerprint(ev).digest
    ev(None)  # fills the memo
    assert eval_fingerprint(ev).digest == before
    del ev.qb_fingerprint_ignore  # type: ignore[attr-defined]
    assert eval_fingerprint(ev).digest != plain  # without the declaration the memo counts
    ev.qb_fingerprint_ignore = ("memo",)  # type: ignore[attr-defined]
    x[0] = 9.0  # the data itself still counts
    assert eval_fingerprint(ev).digest != before
