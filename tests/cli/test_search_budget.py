"""``quantbalance search`` checks its budget flags with Budget's own check (one text)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quantbalance.cli.search_cmd import run_search
from quantbalance.errors import ConfigError
from quantbalance.search import Budget
from quantbalance.search.result import LIMITS, check_one_limit


def test_budget_and_cli_share_one_check(tmp_path: Path) -> None:
    text = "give exactly one of {} (got {}); e.g. {}"
    with pytest.raises(ConfigError) as lib:
        Budget(max_drop=0.01, max_bytes=1e6)
    expected = text.format(", ".join(LIMITS), "max_drop, max_bytes", "Budget(max_drop=0.01)")
    assert expected in str(lib.value)
    flags = "--max-drop, --max-bytes, --max-latency-ms"
    with pytest.raises(ConfigError) as cli:
        run_search(tmp_path / "out", max_drop="1%", max_bytes="2MB")
    assert str(cli.value) == text.format(flags, "--max-drop, --max-bytes", "--max-drop 1%")
    with pytest.raises(ConfigError, match=re.escape(f"{flags} (got none)")):
        run_search(tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before any work
    check_one_limit(["max_bytes"])  # exactly one: no error
