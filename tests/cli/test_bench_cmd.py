"""``quantbalance bench``: the table, the JSON, ``--onnx``, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import quantbalance as qb
from quantbalance.cli.bench_cmd import parse_dims, parse_sizes
from quantbalance.cli.main import app
from quantbalance.errors import ConfigError

runner = CliRunner()


def test_bench_a_factory_model_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "factories:with_eval", "--engines", "float,bf16,qb-ort",
            "--presets", "w8a8", "--batch", "1,4", "--rounds", "2", "--out", str(out)]  # fmt: skip
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for text in ("engine", "b1 ms", "b4 ms", "b4 ×float", "cosine", "float torch", "torch bf16",
                 "qb w8a8 ORT", "factories:with_eval: median of 2 interleaved rounds"):  # fmt: skip
        assert text in r.output, text
    data = json.loads(out.read_text())
    assert [row["engine"] for row in data["rows"]] == ["float torch", "torch bf16", "qb w8a8 ORT"]
    assert data["batch_sizes"] == [1, 4] and data["rounds"] == 2
    assert data["rows"][1]["vs_bf16"] == {"1": 1.0, "4": 1.0}
    fastest = data["float_reference"]["4"]
    assert fastest in ("float torch", "torch bf16") and "fastest float engine" in r.output
    assert next(row for row in data["rows"] if row["engine"] == fastest)["vs_float"]["4"] == 1.0
    assert data["rows"][2]["metrics"]["cosine"] > 0.99
    assert data["rows"][2]["nbytes"] > 0


def test_bench_onnx_file(tmp_path: Path) -> None:
    from factories import with_eval

    model, calib, _ = with_eval()
    q = qb.quantize(model, "int8-weight", calib, progress=False)
    path = qb.export_onnx(q, calib[0], tmp_path / "m.onnx")
    out = tmp_path / "onnx.json"
    args = ["bench", "--onnx", str(path), "--batch", "1", "--batch", "8", "--rounds", "3",
            "--out", str(out)]  # fmt: skip
    r = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "m.onnx: median of 3 interleaved rounds" in r.output and "b8 ms" in r.output
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["engine"] == "ORT" and set(row["ms"]) == {"1", "8"}
    assert row["nbytes"] == path.stat().st_size
    assert f"{path.stat().st_size / 1e3:.2f} kB" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "smollm"], "unknown task 'smollm'; accepted: minilm, fashion"),
        (["--task", "fashion", "--engines", "float,tensorrt"],
         "unknown engine 'tensorrt'; accepted: float, bf16"),
        (["--task", "fashion", "--presets", "w5"], "unknown preset 'w5'; accepted:"),
        (["--task", "fashion", "--batch", "0"], "--batch '0'; accepted: positive integers"),
        ([], "give exactly one of --task"),
        (["--task", "fashion", "--onnx", "x.onnx"], "give exactly one of --task"),
        (["--onnx", "missing.onnx"], "no such file; accepted: an existing .onnx"),
        (["--onnx", "missing.onnx", "--dim", "seq"], "--dim 'seq'; accepted: NAME=SIZE"),
        (["--model", "factories:bare"], "no example batch"),
    ],
)  # fmt: skip
def test_bad_options_exit_2_with_what_is_accepted(args: list[str], message: str) -> None:
    r = runner.invoke(app, ["bench", *args], env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split()), r.output


def test_corrupt_onnx_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    r = runner.invoke(app, ["bench", "--onnx", str(bad)], env={"COLUMNS": "300"})
    assert r.exit_code == 2
    assert "is not a model ONNX Runtime can load" in " ".join(r.output.split())


def test_engines_help_lists_every_engine() -> None:
    from quantbalance.bench.engines import ENGINES
    from quantbalance.cli.bench_cmd import ENGINES_HELP

    assert ENGINES_HELP.endswith(", ".join(ENGINES))


def test_doctests_run() -> None:
    import doctest

    from quantbalance.cli import bench_cmd

    res = doctest.testmod(bench_cmd)
    assert res.attempted >= 2 and res.failed == 0


def test_option_parsers() -> None:
    assert parse_sizes(None) is None
    assert parse_sizes(["1, 32", "64"]) == [1, 32, 64]
    assert parse_dims(["seq=64", "n = 3"]) == {"seq": 64, "n": 3}
    with pytest.raises(ConfigError, match="positive integers"):
        parse_sizes(["1,x"])
    with pytest.raises(ConfigError, match="NAME=SIZE"):
        parse_dims(["seq=0"])
