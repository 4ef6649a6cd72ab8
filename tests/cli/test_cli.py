import json

from typer.testing import CliRunner

from quantbalance.cli.main import app

runner = CliRunner()


def test_presets_lists_every_preset() -> None:
    r = runner.invoke(app, ["presets"])
    assert r.exit_code == 0
    for name in ["int8-weight", "w8a8", "w8a8-dynamic", "w4-g128", "w4a8", "nf4", "w3-g128"]:
        assert name in r.output


def test_quantize_user_model_writes_result(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"
    args = ["quantize", "--model", "factories:with_eval", "--preset", "w8a8", "--preset",
            "w4-g128", "--out", str(out)]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "result.json").read_text())
    assert res["float"]["metrics"]["cosine"] == 1.0
    assert set(res["plans"]) == {"w8a8", "w4-g128"}
    w8 = res["plans"]["w8a8"]
    assert w8["quant_metrics"]["cosine"] > 0.999
    assert res["plans"]["w4-g128"]["quant_bytes"] < w8["quant_bytes"] < res["float"]["bytes"]
    assert w8["plan"]["name"] == "w8a8"
    assert "quantbalance on factories:with_eval" in r.output


def test_plan_file_and_analyze(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = tmp_path / "p.yaml"
    plan.write_text("name: mine\nlayers:\n  '0':\n    weight: {bits: 4}\n")
    r = runner.invoke(app, ["quantize", "--model", "factories:with_eval", "--plan", str(plan),
                            "--out", str(tmp_path / "q")])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "q" / "result.json").read_text())
    assert res["plans"]["mine"]["plan"]["layers"]["0"]["weight"]["bits"] == 4
    r = runner.invoke(app, ["analyze", "--model", "factories:with_eval", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "analysis.json").read_text())["layers"]
    assert [row["layer"] for row in rows] == ["0", "2"]


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = runner.invoke(app, ["quantize", "--model", "factories:bare", "--preset", "w8a8",
                            "--out", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 2 and "needs calibration data" in r.output
    r = runner.invoke(app, ["quantize", "--model", "factories:not_a_model", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "expected a Task" in r.output
    r = runner.invoke(app, ["quantize", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = runner.invoke(app, ["quantize", "--task", "mnist", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "known tasks" in r.output
    r = runner.invoke(app, ["quantize", "--model", "factories:with_eval", "--preset", "w5",
                            "--out", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 2 and "accepted" in r.output
    assert not (tmp_path / "result.json").exists()
