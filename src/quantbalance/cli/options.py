"""Typer options shared by ``quantize``, ``analyze`` and ``search``: model sources and data.

``quantize`` and ``search`` take the whole data bundle with :func:`with_data_options`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, cast

import typer

from quantbalance.cli.loading import DataOptions

F = TypeVar("F", bound=Callable[..., Any])

HfOpt = Annotated[
    str | None,
    typer.Option("--hf", help="Hugging Face model folder or cached hub id (by architecture)"),
]
HfTaskOpt = Annotated[
    str | None,
    typer.Option("--hf-task", help="force the HF model kind (causal-lm, sentence-embedding, ...)"),
]
OnnxOpt = Annotated[str | None, typer.Option("--onnx", help="an ONNX model file")]
DataOpt = Annotated[
    str | None,
    typer.Option("--data", help=".txt (one sample a line), .jsonl/.csv, image folder, .npy, ..."),
]
ColumnOpt = Annotated[str | None, typer.Option("--column", help="text column of JSONL/CSV")]
LabelsOpt = Annotated[
    str | None,
    typer.Option("--labels", help="label column (accuracy/F1); 'folders' for image classes"),
]
NumSamplesOpt = Annotated[
    int | None, typer.Option("--num-samples", help="use at most this many samples")
]
NCalibOpt = Annotated[int | None, typer.Option("--n-calib", help="calibration samples")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="tokens per text")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="samples per batch")]
SeedOpt = Annotated[int, typer.Option("--seed", help="shuffle seed of the data split")]
HardwareOpt = Annotated[
    str,
    typer.Option(
        "--hardware",
        help="int8 target the Plans are quantized for: auto (this machine), vnni (CPUs with "
        "VNNI/AMX: full-range int8 weights) or avx2 (x86 without VNNI: 7-bit weights where "
        "activations are int8)",
    ),
]


def data_options(
    data: str | None,
    column: str | None,
    labels: str | None,
    metric: str | None,
    num_samples: int | None,
    n_calib: int | None,
    seq_len: int,
    batch_size: int,
    seed: int,
    hf_task: str | None,
) -> DataOptions:
    """Collect the data options of a command.

    Args:
        data: ``--data``.
        column: ``--column``.
        labels: ``--labels``.
        metric: ``--metric``.
        num_samples: ``--num-samples``.
        n_calib: ``--n-calib``.
        seq_len: ``--seq-len``.
        batch_size: ``--batch-size``.
        seed: ``--seed``.
        hf_task: ``--hf-task``.

    Returns:
        The :class:`~quantbalance.cli.loading.DataOptions`.
    """
    return DataOptions(data, column, labels, metric, num_samples, n_calib, seq_len, batch_size,
                       seed, hf_task)  # fmt: skip


#: The options :func:`with_data_options` adds: parameter name, typer annotation, default.
DATA_PARAMS: tuple[tuple[str, Any, Any], ...] = (
    ("data", DataOpt, None),
    ("column", ColumnOpt, None),
    ("labels", LabelsOpt, None),
    ("num_samples", NumSamplesOpt, None),
    ("n_calib", NCalibOpt, None),
    ("seq_len", SeqLenOpt, 128),
    ("batch_size", BatchSizeOpt, 8),
    ("seed", SeedOpt, 0),
    ("hf_task", HfTaskOpt, None),
)


def with_data_options(command: F) -> F:
    """Give a typer command every data option (``--data``, ``--column``, ``--labels``,
    ``--num-samples``, ``--n-calib``, ``--seq-len``, ``--batch-size``, ``--seed``,
    ``--hf-task``) as one ``data_opts: DataOptions`` argument.

    The command declares ``data_opts``; the options take its place in the signature typer
    reads, and ``DataOptions.metric`` is the command's own ``--metric`` (None without one).

    Args:
        command: the command function.

    Returns:
        The command as typer registers it.
    """
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "data_opts"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
        for name, hint, default in DATA_PARAMS
    ]

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        fields = {name: kwargs.pop(name, default) for name, _, default in DATA_PARAMS}
        return command(**kwargs, data_opts=DataOptions(metric=kwargs.get("metric"), **fields))

    run.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
    return cast(F, run)
