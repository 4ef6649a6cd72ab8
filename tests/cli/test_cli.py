import json

from typer.testing import CliRunner

from quantbalance.cli.main import app
from quantbalance.cli.search_cmd import search_config
from quantbalance.search import SearchConfig

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


# ----------------------------------------------------------------------------- search


def test_search_user_model_writes_report_and_a_readable_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "s"
    args = ["search", "--model", "factories:with_eval", "--metric", "cosine", "--max-drop",
            "1%", "--max-evals", "2", "--out", str(out), "--cache-dir",
            str(tmp_path / "c")]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "report.html").is_file() and (out / "plan.json").is_file()
    rep = json.loads((out / "report.json").read_text())
    assert rep["met_budget"] and rep["chosen"]["drop"] <= 0.01
    assert f"report: {out / 'report.html'}" in r.output.replace("\n", "")
    # off a terminal the table keeps whole plan names (rich would truncate at 80 columns)
    for name in ["int8-weight", "w8a8-dynamic", "w4-g128", rep["chosen"]["name"]]:
        assert name in r.output
    assert "…" not in r.output


def test_search_measure_estimates_the_other_pairs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "s"
    args = ["search", "--model", "factories:with_eval", "--metric", "cosine", "--max-bytes",
            "2kB", "--measure", "3", "--max-evals", "1", "--out", str(out), "--cache-dir",
            str(tmp_path / "c")]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code in (0, 1), r.output
    report = json.loads((out / "report.json").read_text())
    sens = report["sensitivity"]["entries"]
    measured = [e["measured"] for layer in sens.values() for k, e in layer.items() if k != "float"]
    assert measured.count(True) == 3 and measured.count(False) > 0
    config = report["info"]["config"]  # the options, as the SearchConfig the search ran with
    assert config["measure"] == 3 and config["max_evals"] == 1
    assert config["cache_dir"] == str(tmp_path / "c")
    assert SearchConfig.model_validate(config) == search_config(
        measure=3, max_evals=1, cache_dir=tmp_path / "c"
    )


def test_search_bad_budgets_exit_2() -> None:
    base = ["search", "--model", "factories:with_eval", "--metric", "cosine"]
    r = runner.invoke(app, base)
    assert r.exit_code == 2 and "exactly one of --max-drop" in r.output
    r = runner.invoke(app, [*base, "--max-drop", "1%", "--max-bytes", "2MB"])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = runner.invoke(app, [*base, "--max-bytes", "12 parsecs"])
    assert r.exit_code == 2 and "--max-bytes" in r.output and "20MB" in r.output
    r = runner.invoke(app, [*base, "--max-drop", "1%", "--measure", "0"])
    assert r.exit_code == 2 and "--measure 0" in r.output


def test_budget_parsers() -> None:
    from quantbalance.cli.search_cmd import parse_bytes, parse_drop

    assert parse_drop("1%") == (0.01, True)
    assert parse_drop("0.5") == (0.5, False)
    assert parse_bytes("200MB") == 200e6
    assert parse_bytes("15MiB") == 15 * 2**20


# ----------------------------------------------------------------------------- make demo


def test_demo_is_the_search_command() -> None:
    from quantbalance import demo

    assert demo.command() == (
        "quantbalance search --task minilm --max-drop 1% --n-sensitivity 32 --out out/demo"
    )


def test_demo_runs_the_cli_search_path_and_says_where_the_report_is(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch, capsys
) -> None:
    from quantbalance import demo
    from quantbalance.cli import search_cmd

    seen = {}

    def small(out, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw)  # the demo's own options, then a tiny model instead of MiniLM
        config = search_cmd.search_config(max_evals=2, cache_dir=tmp_path / "c")
        kw = kw | {"task": None, "model": "factories:with_eval", "metric": "cosine",
                   "n_sensitivity": None, "config": config}  # fmt: skip
        return search_cmd.run_search(out, **kw)

    monkeypatch.setattr(demo, "run_search", small)
    monkeypatch.setattr(demo, "schemes_table", lambda console: [{"scheme": "int8"}])
    assert demo.main(tmp_path / "demo") == 0
    assert {k: seen[k] for k in demo.SEARCH} == demo.SEARCH
    text = capsys.readouterr().out
    assert "quantbalance search --task minilm --max-drop 1%" in text
    assert f"report: {tmp_path / 'demo' / 'report.html'}" in text.replace("\n", "")
    assert "w8a8-dynamic" in text and "…" not in text
    assert "deployed latency: quantbalance torch engine" in text  # measured next to predicted
    rows = json.loads((tmp_path / "demo" / "weight_schemes.json").read_text())
    assert rows == [{"scheme": "int8"}]


def test_demo_schemes_table_on_the_real_weight() -> None:
    import pytest

    from quantbalance.cli.search_cmd import make_console
    from quantbalance.demo import SCHEMES, schemes_table
    from quantbalance.errors import AssetMissingError

    try:
        rows = schemes_table(make_console())
    except AssetMissingError as exc:  # pragma: no cover - assets come with `make install`
        pytest.skip(str(exc))
    assert [r["scheme"] for r in rows] == [s.label for s in SCHEMES]
    by = {r["scheme"]: r for r in rows}
    assert by[SCHEMES[1].label]["sqnr"] > by[SCHEMES[2].label]["sqnr"] + 15  # int8 >> int4
    assert by[SCHEMES[1].label]["bytes"] < 1536 * 384 * 4 / 3.5


def test_third_party_noise_is_quiet_unless_verbose() -> None:
    import logging

    assert runner.invoke(app, ["presets"]).exit_code == 0
    assert logging.getLogger("torchao").level == logging.ERROR
    assert logging.getLogger("torch.utils._pytree").level == logging.ERROR
    assert runner.invoke(app, ["-v", "presets"]).exit_code == 0
    assert logging.getLogger("torchao").level == logging.INFO
