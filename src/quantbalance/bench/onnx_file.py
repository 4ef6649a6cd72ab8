"""Time any ONNX file in ONNX Runtime on inputs generated from its graph (``bench --onnx``)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantbalance.bench.result import (
    BenchResult,
    BenchRow,
    env_info,
)
from quantbalance.deploy.ort import ONNX_NP_TYPES as _NP
from quantbalance.deploy.ort import OrtSession
from quantbalance.errors import CheckpointError, ConfigError, UnsupportedError
from quantbalance.evaluate.timing import Clock, time_interleaved


def bench_onnx(
    path: str | os.PathLike[str],
    *,
    batch_sizes: Sequence[int] = (1,),
    dims: Mapping[str, int] | None = None,
    length: int = 128,
    rounds: int = 10,
    threads: int | None = None,
    clock: Clock = time.perf_counter,
) -> BenchResult:
    """Time an ONNX file in :class:`OrtSession` on generated inputs.

    Inputs follow the graph: a dynamic first dimension is the batch size, another dynamic
    dimension takes ``dims[name]`` or else ``length``; float inputs are standard normal, integer
    inputs zeros (a valid token id / index for any vocabulary), booleans True.

    Args:
        path: the ``.onnx`` file.
        batch_sizes: timed batch sizes.
        dims: sizes of named dynamic dimensions (e.g. ``{"sequence": 64}``).
        length: size of any other dynamic dimension.
        rounds: timed rounds.
        threads: ONNX Runtime intra-op threads (default: torch's setting).
        clock: seconds timer.

    Returns:
        A result with one row, ``ORT``; its note lists the inputs used.

    Raises:
        ConfigError: the file does not exist, or a size is invalid.
        CheckpointError: ONNX Runtime cannot load the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--onnx {p}: no such file; accepted: an existing .onnx model file")
    if rounds < 1 or length < 1 or any(b < 1 for b in batch_sizes):
        raise ConfigError(
            f"rounds={rounds}, length={length}, batch sizes={list(batch_sizes)}; "
            "accepted: integers >= 1"
        )
    threads = threads or torch.get_num_threads()
    try:
        sess = OrtSession(p, intra_op_threads=threads)
    except Exception as exc:  # onnxruntime raises its own (non-exported) exception types
        raise CheckpointError(
            f"{p} is not a model ONNX Runtime can load ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); accepted: a valid .onnx file"
        ) from exc
    spec = sess.session.get_inputs()
    batches = {b: onnx_inputs(spec, b, dims or {}, length) for b in batch_sizes}
    note = "; ".join(f"{k} {list(v.shape)} {v.dtype}" for k, v in batches[batch_sizes[0]].items())
    run = sess.session.run
    runs = {"ORT": lambda feeds: run(None, feeds)}
    for feeds in batches.values():
        runs["ORT"](feeds)
    times = time_interleaved(runs, batches, rounds, clock)
    row = BenchRow("ORT", times["ORT"], p.stat().st_size, note=f"inputs: {note}")
    return BenchResult(p.name, list(batch_sizes), rounds, [row], env_info(threads))


def onnx_inputs(
    spec: Sequence[Any], batch: int, dims: Mapping[str, int], length: int
) -> dict[str, Any]:
    """Generated feeds for ONNX Runtime inputs (``session.get_inputs()``).

    Args:
        spec: the inputs (``name``, ``shape`` with ints, names or None, ``type``).
        batch: the size of a dynamic first dimension.
        dims: sizes of named dynamic dimensions.
        length: size of other dynamic dimensions.

    Returns:
        Input name -> numpy array.
    """
    rng = np.random.default_rng(0)
    feeds = {}
    for i in spec:
        shape = [
            d if isinstance(d, int) and d > 0 else batch if axis == 0 else dims.get(str(d), length)
            for axis, d in enumerate(i.shape)
        ]
        dtype = _NP.get(i.type)
        if dtype is None:
            raise UnsupportedError(
                f"input {i.name!r} has type {i.type}; accepted: {', '.join(_NP)}"
            )
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[i.name] = np.ones(shape, dtype) if dtype == np.bool_ else np.zeros(shape, dtype)
    return feeds
