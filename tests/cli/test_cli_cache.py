"""``quantbalance search`` says what the cache contributed; ``--no-cache`` reads and writes none."""

import json

from typer.testing import CliRunner

from quantbalance.cli.main import app

runner = CliRunner()
BASE = ["search", "--model", "factories:with_eval", "--metric", "cosine", "--max-drop", "1%",
        "--max-evals", "1"]  # fmt: skip


def test_cache_use_is_reported_and_no_cache_writes_nothing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "default-cache"
    monkeypatch.setenv("QB_CACHE_DIR", str(home))
    r = runner.invoke(app, [*BASE, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / "a" / "report.json").read_text())["info"]["cache"]
    assert first["hits"] == 0 and first["misses"] > 0 and first["folder"] == str(home)
    assert "cache: 0 metric measurements reused" in r.output
    r = runner.invoke(app, [*BASE, "--out", str(tmp_path / "b")])
    again = json.loads((tmp_path / "b" / "report.json").read_text())["info"]["cache"]
    assert again["hits"] > 0 and again["by_kind"]["sens"]["misses"] == 0
    assert "metric measurements reused" in (tmp_path / "b" / "report.html").read_text()
    n_files = len(list(home.rglob("*.json")))
    r = runner.invoke(app, [*BASE, "--no-cache", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    off = json.loads((tmp_path / "c" / "report.json").read_text())["info"]["cache"]
    assert off["hits"] == 0 and off["folder"] is None
    assert len(list(home.rglob("*.json"))) == n_files
    assert "cache off" in r.output
