"""The ``quantbalance`` command line (typer + rich)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from quantbalance.analysis import analyze as run_analyze
from quantbalance.cli.export_cmd import exporter
from quantbalance.cli.loading import DataOptions, load_source
from quantbalance.cli.offload_cmd import quantize_offloaded_cli
from quantbalance.cli.options import (
    BatchSizeOpt,
    ColumnOpt,
    DataOpt,
    HardwareOpt,
    HfOpt,
    HfTaskOpt,
    NumSamplesOpt,
    OnnxOpt,
    SeqLenOpt,
    data_options,
    with_data_options,
)
from quantbalance.cli.run import quantize_and_compare
from quantbalance.errors import QuantBalanceError
from quantbalance.hardware import detect
from quantbalance.io import atomic_write_text, json_safe
from quantbalance.lowering import targeted
from quantbalance.plan import ALL_PRESETS

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

TaskOpt = Annotated[
    str | None, typer.Option("--task", help="benchmark task: minilm, fashion, smollm")
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="module:factory returning a model")]
OutOpt = Annotated[Path, typer.Option("--out", help="output folder")]


def _fail(e: QuantBalanceError) -> None:
    console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """quantbalance: quantize a model and see, measured, what it costs."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    quiet_third_party_logs(verbose)


#: Loggers of optional packages that transformers imports on its own (torchao's "Failed to load"
#: CUDA-only extensions on a CPU machine, torch's pytree deprecation notes): noise on a terminal.
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_third_party_logs(verbose: bool = False) -> None:
    """Show only errors from :data:`NOISY_LOGGERS` unless ``verbose``.

    Args:
        verbose: keep their warnings.
    """
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)


@app.command()
def presets() -> None:
    """List the named presets."""
    t = Table("preset", "what it is")
    for k, v in ALL_PRESETS.items():
        t.add_row(k, v)
    console.print(t)


@app.command()
def env(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """What this CPU can run: ISA level, VNNI, AMX, native bf16, cores (and what that means)."""
    hw = detect()
    if as_json:
        console.print_json(json.dumps(hw.to_dict()))
        return
    t = Table("property", "value", title="this machine")
    for k, v in hw.to_dict().items():
        t.add_row(k, ", ".join(v) if isinstance(v, list) else str(v))
    console.print(t)
    if hw.int8_target == "avx2":
        console.print(
            "int8: this CPU's int8 kernels saturate int16 pair sums (no VNNI): plans quantized "
            "here keep int8 weights within ±64 where activations are int8 (hardware='avx2')."
        )
    if not hw.native_bf16:
        console.print("bf16: emulated here (slower than float32); engines default to float32.")


@app.command()
@with_data_options
def quantize(
    out: OutOpt = Path("out/quantize"),
    task: TaskOpt = None,
    model: ModelOpt = None,
    hf: HfOpt = None,
    preset: Annotated[list[str] | None, typer.Option("--preset", help="preset(s)")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="a Plan file (.json/.yaml)")] = None,
    algorithm: Annotated[str | None, typer.Option("--algorithm")] = None,
    offload: Annotated[
        str | None, typer.Option("--offload", help="disk|cpu: --hf checkpoint block by block")
    ] = None,
    save: Annotated[Path | None, typer.Option("--save", help="output folder (--offload)")] = None,
    calib_text: Annotated[
        Path | None, typer.Option("--calib-text", help="text file for calibration (--offload)")
    ] = None,
    calib_n: Annotated[int, typer.Option("--calib-n", help="calibration windows")] = 16,
    calib_seq: Annotated[int, typer.Option("--calib-seq", help="tokens per window")] = 512,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda (--offload)")] = None,
    onnx: OnnxOpt = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="metric (default by model)")
    ] = None,
    export: Annotated[
        list[str] | None,
        typer.Option("--export", help="also write OUT/<plan>/ as qb|onnx|compressed-tensors|gguf"),
    ] = None,
    hardware: HardwareOpt = "auto",
    *,
    data_opts: DataOptions,
) -> None:
    """Quantize a model with one or more presets (or a Plan file) and compare with float.

    With --offload disk --hf PATH --save OUT, a Hugging Face causal LM is quantized one
    transformer block at a time (memory: one block) and written to OUT, without evaluation.
    """
    if offload is not None:
        try:
            name = str(plan) if plan else (preset or ["w4-g128"])[0]
            quantize_offloaded_cli(hf, name, algorithm, offload, save, calib_text, calib_n,
                                   calib_seq, device, console)  # fmt: skip
        except QuantBalanceError as e:
            _fail(e)
        return
    try:
        names = [str(plan)] if plan else (preset or ["w8a8"])
        hook = exporter(export, out, hf, console) if export else None
        run = targeted(quantize_and_compare, hardware)
        result = run(names, task, model, hf, algorithm, console, onnx, data_opts, hook)
        path = atomic_write_text(out / "result.json", json.dumps(json_safe(result), indent=1))
    except QuantBalanceError as e:
        _fail(e)
        return
    console.print(f"result written to [bold]{path}[/]")


@app.command()
def analyze(
    out: OutOpt = Path("out/analyze"),
    task: TaskOpt = None,
    model: ModelOpt = None,
    hf: HfOpt = None,
    top: Annotated[int, typer.Option(help="rows to show")] = 15,
    onnx: OnnxOpt = None,
    data: DataOpt = None,
    column: ColumnOpt = None,
    num_samples: NumSamplesOpt = None,
    seq_len: SeqLenOpt = 128,
    batch_size: BatchSizeOpt = 8,
    hf_task: HfTaskOpt = None,
) -> None:
    """Per-layer weight/activation statistics and the SQNR of candidate schemes."""
    try:
        t0 = time.perf_counter()
        opts = data_options(data, column, None, None, num_samples, None, seq_len, batch_size, 0,
                            hf_task)  # fmt: skip
        src = load_source(task, model, hf, onnx, opts)
        a = run_analyze(src.model, src.calib_data or None)
    except QuantBalanceError as e:
        _fail(e)
        return
    labels = list(a.rows[0]["weight_sqnr"]) if a.rows else []
    table = Table("layer", "type", "w absmax", "w kurt", "a absmax", "a kurt",
                  *[f"{s} dB" for s in labels], title=f"analysis of {src.name}")  # fmt: skip
    for r in sorted(a.rows, key=lambda r: r["weight_sqnr"][labels[-1]])[:top]:
        act = r.get("activation", {})
        table.add_row(
            r["layer"], r["type"], f"{r['weight']['absmax']:.3g}", f"{r['weight']['kurtosis']:.2f}",
            f"{act.get('absmax', math.nan):.3g}", f"{act.get('kurtosis', math.nan):.2f}",
            *[f"{r['weight_sqnr'][s]:.1f}" for s in labels],
        )  # fmt: skip
    console.print(table)
    payload = a.to_dict() | {"task": src.name, "seconds": time.perf_counter() - t0}
    try:
        path = atomic_write_text(out / "analysis.json", json.dumps(json_safe(payload), indent=1))
    except QuantBalanceError as e:
        _fail(e)
        return
    console.print(f"analysis written to [bold]{path}[/]")


from quantbalance.cli.search_cmd import search_command  # noqa: E402 - after the app exists

app.command("search")(search_command)

from quantbalance.cli.bench_cmd import bench_command  # noqa: E402 - after the app exists

app.command("bench")(bench_command)

from quantbalance.cli.export_cmd import export_command  # noqa: E402 - after the app exists

app.command("export")(export_command)


if __name__ == "__main__":
    app()
