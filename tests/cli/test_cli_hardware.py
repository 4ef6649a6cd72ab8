"""``--hardware auto|vnni|avx2`` on ``quantbalance quantize`` and ``quantbalance search``."""

import json

from typer.testing import CliRunner

from quantbalance.cli.main import app
from quantbalance.hardware import detect

runner = CliRunner()


def test_quantize_hardware_sets_the_plans_int8_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    got = {}
    for hw in ("vnni", "avx2", "auto"):
        out = tmp_path / hw
        args = ["quantize", "--model", "factories:with_eval", "--preset", "w8a8", "--hardware", hw,
                "--out", str(out)]  # fmt: skip
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        got[hw] = json.loads((out / "result.json").read_text())["plans"]["w8a8"]
    assert got["vnni"]["plan"]["hardware"] == "vnni" and got["avx2"]["plan"]["hardware"] == "avx2"
    assert got["auto"]["plan"]["hardware"] == detect().int8_target
    # avx2: the int8-input layers keep 7-bit weight codes (within ±64), so fewer bytes
    assert got["avx2"]["quant_bytes"] < got["vnni"]["quant_bytes"]


def test_bad_hardware_exits_2_naming_what_is_accepted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for cmd in (["quantize", "--preset", "w8a8"], ["search", "--max-drop", "1%"]):
        r = runner.invoke(app, [*cmd, "--model", "factories:with_eval", "--hardware", "arm",
                                "--out", str(tmp_path)])  # fmt: skip
        assert r.exit_code == 2, r.output
        assert "hardware='arm'" in r.output and "'avx2'" in r.output
