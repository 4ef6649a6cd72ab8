"""Every CLI option given wrong values: exit status 0, 1 or 2 and a message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from quantbalance.cli.main import app

runner = CliRunner()
WRONG = ["", "abc", "-1", "0", "1e400", "nan", "inf", "1.5", "1%", "%", "5MB", "-5MB", "w8a8",
         "x:y", "factories:nope", "factories:bare", "nonexistent.yaml", "/dev/null", "/dev/null/x",
         "/tmp", "minilm"]  # fmt: skip
BASE = {
    "quantize": ["quantize", "--model", "factories:with_eval"],
    "analyze": ["analyze", "--model", "factories:with_eval"],
    "search": ["search", "--model", "factories:with_eval", "--metric", "cosine", "--max-drop",
               "1%", "--max-evals", "1", "--no-cache"],
}  # fmt: skip
OPTIONS = {
    "quantize": ["--model", "--preset", "--plan", "--algorithm", "--task", "--hf", "--out"],
    "analyze": ["--model", "--top", "--task", "--hf", "--out"],
    "search": ["--max-drop", "--max-bytes", "--max-latency-ms", "--metric", "--max-evals",
               "--objective", "--algorithm", "--n-sensitivity", "--measure", "--cache-dir",
               "--out", "--model", "--task", "--hf"],
}  # fmt: skip


#: A value that passes the checks costs ``search`` a whole search and report: fewer values,
#: one of each kind.
SEARCH_WRONG = ["", "abc", "-1", "0", "1e400", "nan", "%", "/dev/null", "/dev/null/x"]


@pytest.mark.parametrize("command", list(BASE))
def test_wrong_option_values_exit_cleanly(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative --out / --cache-dir values land in here
    monkeypatch.setenv("QB_CACHE_DIR", str(tmp_path / "cache"))
    from quantbalance.report import plots

    def no_png(fig: object) -> str:  # the report's plots take seconds and read no option
        plots.plt.close(fig)
        return ""

    monkeypatch.setattr(plots, "_png", no_png)
    leaks = []
    for opt in OPTIONS[command]:
        for value in SEARCH_WRONG if command == "search" else WRONG:
            args = list(BASE[command])
            if opt in args:
                args[args.index(opt) + 1] = value
            else:
                args += [opt, value]
            if opt != "--out":
                args += ["--out", str(tmp_path / "out")]
            r = runner.invoke(app, args)
            if r.exception is not None and not isinstance(r.exception, SystemExit):
                leaks.append(f"{opt} {value!r}: {type(r.exception).__name__}: {r.exception}")
            elif r.exit_code not in (0, 1, 2):
                leaks.append(f"{opt} {value!r}: exit {r.exit_code}")
            elif r.exit_code == 2:
                assert r.output.strip(), (opt, value)  # says why
    assert not leaks, "\n".join(leaks)
