"""Interruptions lose nothing: a killed search resumes from its cache; runs share a folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from trust_net import run, summary

import quantbalance as qb

HERE = Path(__file__).parent
SRC = Path(qb.__file__).resolve().parents[1]
COMPARED = ("plan", "reference", "chosen", "sensitivity")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spawn(cache: Path, out: Path, slow: float | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    env.update({"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    if slow is not None:
        env["QB_TEST_SLOW_PUT"] = str(slow)
    cmd = [sys.executable, str(HERE / "trust_net.py"), str(cache), str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def test_killed_search_resumes_from_its_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = _spawn(cache, tmp_path / "never.json", slow=0.25)
    deadline = time.monotonic() + 300
    while len(_entries(cache / "sens")) < 5:  # mid-sensitivity: 5 of 16 measurements done
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        assert time.monotonic() < deadline, "the search never reached the sensitivity phase"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "never.json").exists()
    done = _entries(cache / "sens")
    assert 5 <= len(done) < 16
    for p in done:  # every file there is a complete entry (atomic writes)
        assert "value" in json.loads(p.read_text())
    resumed = summary(run(cache))
    sens = resumed["cache"]["by_kind"]["sens"]
    assert sens == {"hits": len(done), "misses": 16 - len(done)}
    truth = summary(run(None))
    for k in COMPARED:
        assert resumed[k] == truth[k], k


def test_two_processes_share_one_cache_folder(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [_spawn(cache, o, slow=0.05) for o in outs]  # slowed: their writes overlap
    for p in procs:
        log = p.communicate(timeout=600)[0].decode()
        assert p.returncode == 0, log[-3000:]
    truth = summary(run(None))
    for o in outs:
        got = json.loads(o.read_text())
        for k in COMPARED:
            assert got[k] == json.loads(json.dumps(truth[k])), k
    for p in cache.rglob("*.json"):  # nothing torn by the concurrent writers
        assert "value" in json.loads(p.read_text())
    assert not list(cache.rglob("*.tmp"))
    after = summary(run(cache))  # and the shared folder now answers everything
    assert after["cache"]["by_kind"]["sens"]["misses"] == 0
    assert after["cache"]["by_kind"]["eval"]["misses"] == 0
