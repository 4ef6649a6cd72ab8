"""``quantbalance search``: the budgeted mixed-precision search from the command line.

Registered in ``cli/main.py`` with ``app.command("search")(search_command)``. The options
become a :class:`~quantbalance.search.SearchConfig` (:func:`search_config`), recorded in
``report.json``; only the report's plotting (matplotlib) is imported when it is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from quantbalance.cli.budget import parse_budget, parse_bytes, parse_drop
from quantbalance.cli.export_cmd import exporter
from quantbalance.cli.fail import fail
from quantbalance.cli.loading import DataOptions, load_source
from quantbalance.cli.options import HardwareOpt, HfOpt, OnnxOpt, with_data_options
from quantbalance.cli.search_show import console, make_console, results_table, show_result
from quantbalance.errors import ConfigError, QuantBalanceError
from quantbalance.lowering import targeted
from quantbalance.quantize import quantize
from quantbalance.search import SearchConfig, search
from quantbalance.search.deployed import measure_deployed
from quantbalance.search.executor import RayExecutor
from quantbalance.search.holdout import split_eval
from quantbalance.search.targets import TARGETS
from quantbalance.tasks.splits import split_task

__all__ = [
    "console",
    "export_plan",
    "make_console",
    "parse_budget",
    "parse_bytes",
    "parse_drop",
    "results_table",
    "run_search",
    "search_command",
    "search_config",
    "show_result",
]


def _load(
    task: str | None,
    model: str | None,
    hf: str | None,
    holdout: bool,
    n_sens: int | None,
    metric: str | None,
    onnx: str | None = None,
    data: Any = None,
) -> tuple[Any, Any, Any]:
    if holdout and task in ("minilm", "fashion", "smollm") and not (model or hf or onnx):
        sp = split_task(task, n_sensitivity=n_sens)
        return sp.search, sp.holdout, sp.sensitivity
    src = load_source(task, model, hf, onnx, data)
    if src.primary_metric == "none" and metric is None:
        raise ConfigError(
            f"{src.name}: no eval function, so no metric to protect; pass --data FILE, make the "
            "factory return a Task, or (model, calib_data, eval_fn) and pass --metric"
        )
    if holdout and src.eval_slicer is not None and src.n_eval_samples:
        # The search sees the first half of the evaluation samples, the budget is judged on
        # the second half.
        half = src.n_eval_samples // 2
        sp = split_eval(src, half, src.n_eval_samples - half, n_sens, "samples")
        return sp.search, sp.holdout, sp.sensitivity
    return src, None, None


def _split_sizes(src: Any, held: Any, sens: Any) -> dict[str, Any]:
    out = {"search": src.info.get("samples")}
    if held is not None:
        out["holdout"] = held.info.get("samples")
    if sens is not None:
        out["sensitivity"] = sens.info.get("samples")
    return {k: v for k, v in out.items() if v is not None}


def run_search(
    out: Path,
    *,
    task: str | None = None,
    model: str | None = None,
    hf: str | None = None,
    max_drop: str | None = None,
    max_bytes: str | None = None,
    max_latency_ms: float | None = None,
    metric: str | None = None,
    holdout: bool = True,
    n_sensitivity: int | None = None,
    out_console: Console | None = None,
    onnx: str | None = None,
    data: Any = None,
    deployed: bool = False,
    config: SearchConfig | None = None,
) -> tuple[Any, Path]:
    """What ``quantbalance search`` does (also ``make demo``): load, search, write the report.

    Args:
        out: output folder (``report.html``, ``report.json``, ``plan.json``).
        task: a benchmark task (``minilm``, ``fashion``, ``smollm``).
        model: ``module:factory`` of a user model.
        hf: a Hugging Face model folder or cached hub id.
        max_drop: drop budget text (``1%`` relative, ``0.5`` absolute).
        max_bytes: size budget text (``20MB``).
        max_latency_ms: latency budget.
        metric: protected metric.
        holdout: judge the budget on a held-out split (benchmark tasks).
        n_sensitivity: eval samples for the single-layer measurements.
        out_console: where the loading status shows (default the module console).
        onnx: an ONNX model file.
        data: ``cli.loading.DataOptions`` (``--data`` etc.) for ``hf``/``onnx``/a bare model.
        deployed: also time the chosen Plan and float as deployed here (``search.deployed``).
        config: the search's options (default :func:`search_config`'s: the command's
            defaults).

    Returns:
        ``(SearchResult, path of report.html)``.

    Raises:
        ConfigError: the budget options are not exactly one, or malformed.
    """
    from quantbalance.report import write_report  # deferred: matplotlib, 0.6 s to import

    con = out_console or console
    budget = parse_budget(max_drop, max_bytes, max_latency_ms, metric)
    config = config or search_config()
    try:  # before the search: a report that cannot be written should not cost a search
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create that folder ({e})") from None
    with con.status("loading model and data"):
        src, held, sens = _load(task, model, hf, holdout, n_sensitivity, metric, onnx, data)
    res = search(src.model, src, budget, holdout=held, sensitivity_source=sens, config=config)
    if "data" in src.info:  # a user's data: how it was split, in the report
        res.info["data"] = src.info["data"] | _split_sizes(src, held, sens)
    if deployed:
        res.info["deployed"] = measure_deployed(src.model, res, src.calib_data, src.example_inputs)
    with con.status("writing the report"):
        path = write_report(res, out, model=src.model, calib_data=src.calib_data)
        res.plan.save(out / "plan.json")
    return res, path


def search_config(
    *,
    algorithm: str = "rtn",
    max_evals: int = 8,
    objective: str = "bytes",
    measure: int | None = None,
    cache_dir: Path | None = None,
    no_cache: bool = False,
    ray: str | None = None,
    target: str | None = None,
    hardware: str = "auto",
) -> SearchConfig:
    """The :class:`SearchConfig` of the command's options (validated before anything loads).

    Args:
        algorithm, max_evals, objective: as the options say.
        measure: ``--measure`` (None: every pair).
        cache_dir: ``--cache-dir`` (None: the default cache); no_cache: ``--no-cache``.
        ray: ``--ray``: ``local``, ``auto`` or ``HOST:PORT`` (None: serially).
        target: ``--target``; hardware: ``--hardware``.

    Returns:
        The config (progress on: a bar on a terminal, one log line per phase elsewhere).
    """
    if target is not None and target not in TARGETS:
        raise ConfigError(f"--target {target!r}; accepted: {', '.join(TARGETS)}")
    if measure is not None and measure < 1:
        raise ConfigError(f"--measure {measure}: give a number of pairs >= 1 (or leave it out)")
    return SearchConfig(
        algorithm=algorithm,
        max_evals=max_evals,
        objective=objective,
        measure=True if measure is None else measure,
        cache_dir=None if no_cache else (cache_dir if cache_dir is not None else "default"),
        progress=True,
        executor=None if ray is None else RayExecutor(address=None if ray == "local" else ray),
        target=target,
        hardware=hardware,
    )


@with_data_options
def search_command(
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("out/search"),
    task: Annotated[str | None, typer.Option("--task", help="minilm, fashion, smollm")] = None,
    model: Annotated[str | None, typer.Option("--model", help="module:factory")] = None,
    hf: HfOpt = None,
    max_drop: Annotated[
        str | None,
        typer.Option("--max-drop", help="'1%' = relative, '0.5' = absolute (metric units)"),
    ] = None,
    max_bytes: Annotated[
        str | None, typer.Option("--max-bytes", help="model size, e.g. 20MB, 15MiB")
    ] = None,
    max_latency_ms: Annotated[
        float | None,
        typer.Option("--max-latency-ms", help="predicted latency on the example inputs"),
    ] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="protected metric")] = None,
    max_evals: Annotated[int, typer.Option("--max-evals", help="verification evals")] = 8,
    objective: Annotated[str, typer.Option(help="drop budgets minimise: bytes|latency")] = "bytes",
    algorithm: Annotated[str, typer.Option(help="weight algorithm")] = "rtn",
    holdout: Annotated[bool, typer.Option(help="judge on a held-out split")] = True,
    n_sensitivity: Annotated[
        int | None,
        typer.Option("--n-sensitivity", help="eval samples for single-layer measurements"),
    ] = None,
    measure: Annotated[
        int | None,
        typer.Option(
            "--measure",
            help="measure only this many (layer, spec) pairs, estimate the rest from proxies",
        ),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir")] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="measure everything anew; read and write no cache")
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="evaluate on Ray: local, auto or HEAD:PORT of a cluster"),
    ] = None,
    onnx: OnnxOpt = None,
    export: Annotated[
        list[str] | None,
        typer.Option("--export", help="write the Plan as qb|onnx|compressed-tensors|gguf"),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target", help="torch|ort|tensorrt|vllm|transformers|llama.cpp: its exact schemes"
        ),
    ] = None,
    hardware: HardwareOpt = "auto",
    *,
    data_opts: DataOptions,
) -> None:
    """Find per-layer precision under a budget; write report.html, report.json and plan.json.

    Exit status: 0 if the budget is met, 1 if not (closest Plan still written), 2: bad input.
    """
    try:
        config = search_config(algorithm=algorithm, max_evals=max_evals, objective=objective,
                               measure=measure, cache_dir=cache_dir, no_cache=no_cache, ray=ray,
                               target=target, hardware=hardware)  # fmt: skip
        res, path = targeted(run_search, hardware)(
            out, task=task, model=model, hf=hf, max_drop=max_drop, max_bytes=max_bytes,
            max_latency_ms=max_latency_ms, metric=metric, holdout=holdout,
            n_sensitivity=n_sensitivity, onnx=onnx, data=data_opts, config=config,
        )  # fmt: skip
    except QuantBalanceError as e:
        fail(e, console)
    show_result(res, path, out)
    if export:
        try:
            export_plan(res.plan, export, out, task=task, model=model, hf=hf, algorithm=algorithm,
                        onnx=onnx, data=data_opts)  # fmt: skip
        except QuantBalanceError as e:
            fail(e, console)
    if not res.met_budget:
        raise typer.Exit(1)


def export_plan(
    plan: Any,
    formats: list[str],
    out: Path,
    *,
    task: str | None,
    model: str | None,
    hf: str | None,
    algorithm: str,
    onnx: str | None = None,
    data: Any = None,
) -> None:
    """``search --export``: quantize the full model with the chosen Plan and write each format.

    Args:
        plan: the chosen Plan.
        formats: export formats.
        out: the search's output folder (artifacts go to ``OUT/<default name>``).
        task: task name.
        model: ``module:factory``.
        hf: HF folder.
        algorithm: weight algorithm.
        onnx: ONNX file.
        data: ``cli.loading.DataOptions`` the search used.
    """
    hook = exporter(formats, out.parent, hf, console)
    with console.status("loading the model to export"):
        src = load_source(task, model, hf, onnx, data)
    q = quantize(src.model, plan, calib_data=src.calib_data or None, algorithm=algorithm)
    hook(out.name, q, src)
