"""``quantbalance quantize --hf PATH --offload disk --save OUT``."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import quantbalance as qb
from quantbalance.cli.main import app

pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")
from llama_ckpt import make_llama_checkpoint  # noqa: E402

runner = CliRunner()


def test_cli_offload_rtn_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    ckpt = make_llama_checkpoint(tmp_path / "m", layers=2)
    out = tmp_path / "q"
    r = runner.invoke(app, ["quantize", "--hf", str(ckpt), "--offload", "disk", "--preset",
                            "w4-g128", "--save", str(out), "--device", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "written to" in r.output
    full = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    q = qb.load(out, full)
    ref = qb.quantize(full, "w4-g128", progress=False)
    x = torch.arange(16).reshape(1, 16)
    assert torch.equal(q(input_ids=x).logits, ref(input_ids=x).logits)


def test_cli_offload_errors(tmp_path: Path) -> None:
    ckpt = make_llama_checkpoint(tmp_path / "m", layers=2)
    r = runner.invoke(app, ["quantize", "--hf", str(ckpt), "--offload", "disk"])
    assert r.exit_code == 2 and "--save OUT" in r.output
    r = runner.invoke(app, ["quantize", "--hf", str(ckpt), "--offload", "disk", "--save",
                            str(tmp_path / "q"), "--algorithm", "gptq"])  # fmt: skip
    assert r.exit_code == 2 and "needs calibration data" in r.output
    missing = str(tmp_path / "none.txt")
    r = runner.invoke(app, ["quantize", "--hf", str(ckpt), "--offload", "disk", "--save",
                            str(tmp_path / "q"), "--calib-text", missing])  # fmt: skip
    assert r.exit_code == 2 and "no such file" in r.output
