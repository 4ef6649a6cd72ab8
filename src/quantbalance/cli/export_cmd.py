"""``quantbalance export``: quantize a model with a Plan and write a deployable artifact.

Registered in ``cli/main.py``; ``quantize --export FORMAT`` and ``search --export FORMAT`` reuse
:func:`export_source`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from quantbalance.cli.loading import load_source
from quantbalance.errors import ConfigError, QuantBalanceError
from quantbalance.exports import FORMATS, export
from quantbalance.io import atomic_write_text
from quantbalance.quantize import as_plan, quantize

console = Console()

#: File name an export gets inside an output folder, per format.
DEFAULT_NAMES = {
    "qb": "model.safetensors",
    "onnx": "model.onnx",
    "compressed-tensors": "compressed-tensors",
    "gguf": "model.gguf",
}


def source_folder(src: Any, explicit: Path | None) -> Path | None:
    """The float model's Hugging Face folder (tokenizer, config) for HF-style exports.

    Args:
        src: the loaded Task.
        explicit: ``--source`` if given.

    Returns:
        ``explicit``, else the task's ``info["source"]`` when it is a folder, else None.
    """
    if explicit is not None:
        return explicit
    found = (src.info or {}).get("source")
    return Path(found) if isinstance(found, str) and Path(found).is_dir() else None


def export_source(
    qmodel: Any, src: Any, fmt: str, path: Path, source: Path | None = None, **options: Any
) -> Any:
    """Export a quantized model of a loaded Task with the options each format needs.

    Args:
        qmodel: the quantized model.
        src: the Task it came from (example inputs, source folder, task name).
        fmt: export format.
        path: file or folder to write.
        source: the float model's HF folder (default: the task's own, if any).
        **options: extra writer options (``fallback``, ``float_type``, ...).

    Returns:
        The ExportResult.
    """
    if fmt == "onnx":
        options.setdefault("example_inputs", src.example_inputs)
    elif fmt == "qb":
        known = src.name in ("minilm", "fashion", "smollm")
        options.setdefault("source", src.name if known else None)
    else:
        options.setdefault("source", source_folder(src, source))
        options.setdefault("overwrite", True)
        if fmt == "gguf" and src.name == "smollm":
            options.setdefault("tokenizer_pre", "smollm")  # llama.cpp's name for its tokenizer
    return export(qmodel, path, format=fmt, **options)


def exporter(
    formats: list[str], out: Path, hf: str | None, con: Console
) -> Callable[[str, Any, Any], None]:
    """The ``on_model`` hook of ``quantize --export``: write each format to ``OUT/<plan>/``.

    Args:
        formats: export formats.
        out: the run's output folder.
        hf: ``--hf`` folder (the tokenizer source), if any.
        con: console.

    Returns:
        ``hook(plan_name, qmodel, task)``.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"--export {bad[0]!r}; accepted: {', '.join(FORMATS)}")

    def hook(name: str, qmodel: Any, src: Any) -> None:
        for fmt in formats:
            dest = out / name / DEFAULT_NAMES[fmt]
            show_export(export_source(qmodel, src, fmt, dest, Path(hf) if hf else None), con)

    return hook


def show_export(res: Any, con: Console | None = None) -> None:
    """Print what an export wrote (size, forms, notes).

    Args:
        res: the ExportResult.
        con: console.
    """
    con = con or console
    forms: dict[str, int] = {}
    for v in res.layers.values():
        forms[v] = forms.get(v, 0) + 1
    con.print(
        f"{res.format}: [bold]{res.path}[/] ({res.nbytes / 1e6:.2f} MB; "
        + ", ".join(f"{k} × {v}" for k, v in sorted(forms.items()))
        + ")"
    )
    for note in res.notes:
        con.print(f"[yellow]note:[/] {note}")


def export_command(
    fmt: Annotated[str, typer.Option("--format", help="qb | onnx | compressed-tensors | gguf")],
    plan: Annotated[Path, typer.Option("--plan", help="Plan file or a search's plan.json")],
    out: Annotated[Path, typer.Option("--out", help="file or folder to write")],
    task: Annotated[str | None, typer.Option("--task", help="minilm, fashion, smollm")] = None,
    model: Annotated[str | None, typer.Option("--model", help="module:factory")] = None,
    hf: Annotated[str | None, typer.Option("--hf", help="local HF model folder")] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="HF folder with the tokenizer (gguf, ct)")
    ] = None,
    algorithm: Annotated[str | None, typer.Option("--algorithm")] = None,
    fallback: Annotated[
        str, typer.Option(help="compressed-tensors: error | float (lossless, float size)")
    ] = "error",
) -> None:
    """Quantize with a Plan and write an artifact an engine serves (exit 2 on bad input)."""
    try:
        if fmt not in FORMATS:
            raise ConfigError(f"--format {fmt!r}; accepted: {', '.join(FORMATS)}")
        if not plan.is_file():
            raise ConfigError(f"--plan {plan}: no such file")
        with console.status("loading model and data"):
            src = load_source(task, model, hf)
        p = as_plan(str(plan))
        with console.status(f"quantizing with {p.name}"):
            q = quantize(src.model, p, calib_data=src.calib_data or None, algorithm=algorithm)
        opts: dict[str, Any] = {"fallback": fallback} if fmt == "compressed-tensors" else {}
        src_dir = source or (Path(hf) if hf else None)
        with console.status(f"writing {fmt}"):
            res = export_source(q, src, fmt, out, src_dir, **opts)
    except QuantBalanceError as e:
        console.print(f"[bold red]error:[/] {e}")
        raise typer.Exit(2) from None
    show_export(res)
    summary = out.parent / f"{out.name}.export.json"

    atomic_write_text(summary, json.dumps(res.to_dict(), indent=1))
