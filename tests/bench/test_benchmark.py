"""The deployment benchmark: interleaved timing, medians, rows, real engines on a tiny model."""

from __future__ import annotations

import doctest
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.bench import benchmark
from quantbalance.bench import engines as bench_engines
from quantbalance.bench import result as bench_result
from quantbalance.bench.benchmark import take
from quantbalance.bench.engines import Engine, Runner
from quantbalance.bench.onnx_file import bench_onnx, onnx_inputs
from quantbalance.bench.result import BenchResult, BenchRow, add_ratios
from quantbalance.errors import CheckpointError, ConfigError
from quantbalance.hardware import detect
from quantbalance.tasks import load_for_bench
from quantbalance.tasks.base import Task


class FakeClock:
    """A clock that only moves when a fake engine runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _task() -> Task:
    net = _net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 16, generator=g)
    with torch.no_grad():
        ref = net(x[:16])

    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            y = model(x[:16])
        return {"cosine": float(nn.functional.cosine_similarity(y, ref).mean())}

    return Task("tiny", net, [x[:16], x[16:32]], x[32:], evaluate, "cosine")


def test_doctests_run() -> None:
    for mod in (benchmark, bench_engines, bench_result):
        res = doctest.testmod(mod)
        assert res.attempted > 0 and res.failed == 0


def _fake_registry(clock: FakeClock) -> dict[str, Engine]:
    def build(ms: float, nbytes: int, scale: float = 1.0) -> Any:
        def factory(ctx: Any, preset: str | None) -> Runner:
            model = ctx.task.model

            def run(batch: torch.Tensor) -> torch.Tensor:
                clock.now += ms * len(batch) / 1e3
                return model(batch) * scale

            return Runner(run, nbytes, note=f"preset={preset}")

        return factory

    def broken(ctx: Any, preset: str | None) -> Runner:
        raise RuntimeError("no such kernel\nsecond line")

    return {
        "ref": Engine("torch bf16", build(2.0, 1000)),
        "slow": Engine("slow one", build(6.0, 4000, scale=-1.0)),
        "broken": Engine("broken one", broken),
        "q": Engine("qb {preset} fake", build(1.0, 250), per_preset=True),
    }


def test_benchmark_rows_ratios_metrics_and_skips(tmp_path: Path) -> None:
    clock = FakeClock()
    res = benchmark.benchmark(
        _task(), engines=["ref", "slow", "broken", "q"], presets=["w8a8", "w4-g128"],
        batch_sizes=[1, 8], rounds=3, workdir=tmp_path, clock=clock,
        registry=_fake_registry(clock),
    )  # fmt: skip
    names = [r.engine for r in res.rows]
    assert names == ["torch bf16", "slow one", "broken one", "qb w8a8 fake", "qb w4-g128 fake"]
    assert res.batch_sizes == [1, 8] and res.rounds == 3 and res.name == "tiny"
    ref, slow, broken = res.row("torch bf16"), res.row("slow one"), res.row("broken one")
    assert ref.ms == {1: pytest.approx(2.0), 8: pytest.approx(16.0)}
    assert slow.vs_bf16 == {1: pytest.approx(3.0), 8: pytest.approx(3.0)}
    assert res.row("qb w8a8 fake").vs_bf16[8] == pytest.approx(0.5)
    assert res.row("qb w4-g128 fake").note == "preset=w4-g128"
    assert ref.metrics["cosine"] == pytest.approx(1.0)
    assert slow.metrics["cosine"] == pytest.approx(-1.0)  # scored through the task's evaluate
    assert (ref.nbytes, slow.nbytes) == (1000, 4000)
    assert broken.skipped == "RuntimeError: no such kernel"
    assert broken.ms == {} and broken.nbytes is None and broken.metrics == {}
    data = json.loads(json.dumps(res.to_dict()))
    assert data["rows"][0]["ms"] == {"1": pytest.approx(2.0), "8": pytest.approx(16.0)}
    assert data["env"]["threads"] >= 1
    md = res.to_markdown().splitlines()
    assert md[0] == (
        "| engine | b1 ms | b8 ms | b1 vs bf16 | b8 vs bf16 | b1 vs fastest float "
        "| b8 vs fastest float | file MB | cosine | note |"
    )
    assert md[3].startswith("| slow one | 6.0 | 48.0 | 3.00x | 3.00x | 3.00x | 3.00x | 0.00 | -1 |")
    assert md[-1] == "fastest float engine (b1: torch bf16, b8: torch bf16)"
    assert "skipped: RuntimeError: no such kernel" in md[4]
    with pytest.raises(ConfigError, match="no row 'nope'"):
        res.row("nope")


def test_default_batch_sizes_are_one_and_the_example_batch() -> None:
    clock = FakeClock()
    res = benchmark.benchmark(_task(), engines=["ref"], rounds=1, clock=clock,
                              registry=_fake_registry(clock))  # fmt: skip
    assert res.batch_sizes == [1, 16]


def test_compiled_engines_get_room_in_dynamo_cache_and_scratch_files_go_away() -> None:
    from torch._dynamo import config as dynamo_config

    seen: dict[str, Any] = {}

    def spy(ctx: Any, preset: str | None) -> Runner:
        seen["limit"], seen["workdir"] = dynamo_config.recompile_limit, ctx.workdir
        (ctx.workdir / "model.bin").write_bytes(b"123")
        return Runner(lambda b: ctx.task.model(b), 3)

    before = dynamo_config.recompile_limit
    registry = {f"e{i}": Engine(f"engine {i}", spy) for i in range(6)}
    res = benchmark.benchmark(_task(), engines=list(registry), batch_sizes=[1, 2], rounds=1,
                              registry=registry)  # fmt: skip
    # one cache entry per engine and shape would pass dynamo's default of 8: compiled
    # engines built late would silently run eager
    assert seen["limit"] >= 6 * 2 and dynamo_config.recompile_limit == before
    assert not seen["workdir"].exists() and res.rows[5].nbytes == 3


def test_add_ratios_without_reference_leaves_them_empty() -> None:
    rows = add_ratios([BenchRow("a", ms={1: 2.0})])
    assert rows[0].vs_bf16 == {}


def test_take_slices_tiles_and_keeps_structure() -> None:
    x = torch.arange(6).reshape(3, 2)
    assert take(x, 2).tolist() == [[0, 1], [2, 3]]
    assert take(x, 5)[:, 0].tolist() == [0, 2, 4, 0, 2]
    d = take({"ids": x, "mask": torch.ones(3, 2)}, 4)
    assert d["ids"].shape == (4, 2) and d["mask"].shape == (4, 2)
    assert [t.shape[0] for t in take((x, x), 1)] == [1, 1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"engines": ["float", "tensorrt"]}, "unknown engine 'tensorrt'; accepted: float, bf16"),
        ({"engines": []}, r"unknown engine \(none given\)"),
        ({"engines": ["qb-ort"], "presets": ["w5"]}, "unknown preset 'w5'; accepted: .*w8a8"),
        ({"engines": ["qb-ort"], "presets": ["w8a8+magic"]}, "unknown algorithm 'magic'"),
        ({"rounds": 0}, "rounds=0; accepted: an integer >= 1"),
        ({"batch_sizes": [0]}, r"batch sizes \[0\]; accepted"),
    ],
)
def test_bad_options_raise_config_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        benchmark.benchmark(_task(), **{"engines": ["float"], **kwargs})


def test_load_task_rejects_tasks_without_bench_sizes() -> None:
    with pytest.raises(ConfigError, match="unknown task 'smollm'; accepted: minilm, fashion"):
        load_for_bench("smollm")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One benchmark of the real (non-compiling) engines on the tiny model, shared."""
    folder = tmp_path_factory.mktemp("bench")
    engines = ["float", "bf16", "ort-float", "ort-dynamic", "ort-static", "qb-ort"]
    res = benchmark.benchmark(_task(), engines=engines, presets=["w8a8"], batch_sizes=[1, 4],
                              rounds=2, workdir=folder)  # fmt: skip
    return res, folder


def test_real_engines_on_a_tiny_model(real_run: tuple[Any, Path]) -> None:
    res, folder = real_run
    assert all(not r.skipped for r in res.rows), [r.skipped for r in res.rows]
    for r in res.rows:
        assert set(r.ms) == {1, 4} and all(v > 0 for v in r.ms.values())
        assert r.metrics["cosine"] > 0.99, r
    assert res.row("torch bf16").vs_bf16 == {1: 1.0, 4: 1.0}
    assert res.row("float torch").nbytes == (folder / "float.safetensors").stat().st_size
    assert res.row("torch bf16").nbytes < res.row("float torch").nbytes
    assert res.row("ORT quantize_dynamic").nbytes == (folder / "ort_dynamic.onnx").stat().st_size
    assert res.row("qb w8a8 ORT").nbytes == (folder / "w8a8.onnx").stat().st_size
    assert res.row("ORT float").note == "no quantized ops"
    assert "MatMulInteger×2" in res.row("ORT quantize_dynamic").note
    assert "Gemm×2" in res.row("ORT quantize_static QDQ").note  # calibrated QDQ around both
    assert "MatMul×2" in res.row("qb w8a8 ORT").note


def test_torchao_missing_gives_a_skipped_row_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao -> ImportError
    res = benchmark.benchmark(_task(), engines=["torchao", "float"], batch_sizes=[2], rounds=1,
                              workdir=tmp_path)  # fmt: skip
    assert "torchao is not importable" in res.rows[0].skipped
    assert "pip install 'quantbalance[bench]'" in res.rows[0].skipped
    assert not res.rows[1].skipped and res.rows[1].ms[2] > 0


@pytest.mark.slow  # torch.compile: ~5-10 s on 2 cores
def test_torchao_row_quantizes_the_linears(tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    res = benchmark.benchmark(_task(), engines=["torchao"], batch_sizes=[2], rounds=1,
                              workdir=tmp_path)  # fmt: skip
    row = res.rows[0]
    assert not row.skipped, row.skipped
    assert "int8 Linear×2 of 2" in row.note
    if not detect().onednn_int8_saturates:  # the peer's full-range int8 saturates without VNNI
        assert row.metrics["cosine"] > 0.99
    assert row.nbytes == (tmp_path / "torchao.pt").stat().st_size


def test_bench_onnx_times_any_file_on_generated_inputs(real_run: tuple[Any, Path]) -> None:
    path = real_run[1] / "w8a8.onnx"
    clock = FakeClock()
    res = bench_onnx(path, batch_sizes=[1, 3], rounds=2, clock=clock)
    (row,) = res.rows
    assert row.engine == "ORT" and res.name == "w8a8.onnx" and set(row.ms) == {1, 3}
    assert row.ms == {1: 0.0, 3: 0.0}  # the fake clock never moved: ORT was timed by it
    assert row.nbytes == path.stat().st_size
    assert "[1, 16] float32" in row.note
    res = bench_onnx(path, batch_sizes=[2], rounds=1)
    assert res.rows[0].ms[2] > 0


def test_ort_static_quantizes_only_nodes_with_a_constant_weight() -> None:
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((10, 4), np.float32), "table")
    w = numpy_helper.from_array(np.zeros((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w"], ["h"], name="linear"),
        helper.make_node("MatMul", ["h", "e_t"], ["s"], name="scores"),  # activation x activation
        helper.make_node("Gather", ["s", "ids"], ["o"], name="pick"),  # gathers activations
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [3])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [ids], [out], initializer=[table, w])
    assert bench_engines._weight_nodes(helper.make_model(graph)) == ["embed", "linear"]


def test_onnx_inputs_fill_dynamic_dims_by_name_batch_or_length() -> None:
    spec = [
        SimpleNamespace(name="ids", shape=["batch", "seq", 3], type="tensor(int64)"),
        SimpleNamespace(name="x", shape=[None, "seq", "other"], type="tensor(float)"),
        SimpleNamespace(name="flag", shape=[2], type="tensor(bool)"),
    ]
    feeds = onnx_inputs(spec, batch=4, dims={"seq": 7}, length=5)
    assert feeds["ids"].shape == (4, 7, 3) and feeds["ids"].dtype == np.int64
    assert not feeds["ids"].any()
    assert feeds["x"].shape == (4, 7, 5) and feeds["x"].dtype == np.float32
    assert feeds["flag"].all()
    bad = [SimpleNamespace(name="s", shape=[1], type="tensor(string)")]
    with pytest.raises(qb.UnsupportedError, match="'s' has type tensor\\(string\\); accepted"):
        onnx_inputs(bad, 1, {}, 1)


def test_bench_onnx_rejects_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file; accepted: an existing \.onnx"):
        bench_onnx(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(CheckpointError, match=r"bad\.onnx is not a model ONNX Runtime can load"):
        bench_onnx(bad)


def test_preset_plus_algorithm_quantizes_with_those_steps(tmp_path: Path) -> None:
    ctx = bench_engines.BenchContext(_task(), tmp_path, threads=1)
    q = ctx.quantized("int8-weight+gptq")
    assert q.qb_plan.layers["re:.*"].algorithm == "gptq"
    assert "gptq" in q.qb_info.algorithm_log
    assert ctx.quantized("int8-weight+gptq") is q  # built once


def test_ratios_against_the_fastest_float_row_named_per_batch() -> None:
    rows = [
        BenchRow("torch bf16", ms={1: 4.0, 8: 10.0}),
        BenchRow("float torch", ms={1: 2.0, 8: 20.0}),
        BenchRow("qb w8a8 torch", ms={1: 1.0, 8: 5.0}),
    ]
    res = BenchResult("t", [1, 8], 3, add_ratios(rows))
    assert res.float_reference == {1: "float torch", 8: "torch bf16"}
    assert rows[2].vs_float == {1: 0.5, 8: 0.5} and rows[1].vs_float == {1: 1.0, 8: 2.0}
    assert "fastest float engine (b1: float torch, b8: torch bf16)" in res.to_markdown()
    assert res.to_dict()["float_reference"] == {"1": "float torch", "8": "torch bf16"}
