"""``qb.load`` memory-maps the checkpoint (safetensors ``safe_open``), never reading it whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy.checkpoint import read

ROWS, COLS = 8192, 4096  # int8 codes: 32 MiB


def _big_checkpoint(tmp_path: Path) -> tuple[Path, nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(COLS, ROWS)).eval()
    q = qb.quantize(net, "int8-weight", progress=False)
    return qb.save(q, tmp_path / "big.safetensors"), net, q


PROBE = """
import json, resource, sys
import quantbalance.deploy.checkpoint as ck
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
meta, tensors = ck.read(sys.argv[1])
n = sum(t.numel() * t.element_size() for t in tensors.values())
print(json.dumps({"grew": peak() - before, "tensor_bytes": n}))
"""


def test_reading_a_checkpoint_never_holds_the_file_twice(tmp_path: Path) -> None:
    path, _, _ = _big_checkpoint(tmp_path)
    size = path.stat().st_size
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tensor_bytes"] > 0.99 * size  # everything was read (and checksummed) ...
    # ... yet the peak grew by about one file (the mapped pages), not the whole file read into
    # bytes plus the tensors copied out of it (>= 2x, as before)
    assert got["grew"] < 1.3 * size, (got, size)


def test_mapped_checkpoint_loads_exactly_and_writes_do_not_reach_the_file(tmp_path: Path) -> None:
    path, net, q = _big_checkpoint(tmp_path)
    stored = path.read_bytes()
    back = qb.load(path, net)
    x = torch.randn(2, COLS)
    assert torch.equal(back(x), q(x))
    _, tensors = read(path)  # the loaded tensors are copy-on-write views of the file
    tensors["0.qweight_packed"].add_(1)
    assert path.read_bytes() == stored
    assert qb.load(path, net)(x).equal(q(x))
