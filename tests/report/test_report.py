"""The search report: sections present, self-contained, and rendered by a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from quantbalance.report import render, write_report
from quantbalance.search import Budget, SearchResult, search

SECTIONS = [
    "summary",
    "comparison",
    "pareto-bytes",
    "pareto-latency",
    "sensitivity",
    "precision",
    "histograms",
    "layers",
    "evaluations",
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Engine:
    """Deterministic latency (no timing noise in tests)."""

    name = "fixed"

    def latency_ms(self, layer_name: str, module: nn.Module, spec: object, shape: object) -> float:
        return module.weight.numel() * (1e-3 if spec is None else 5e-4)

    def model_latency_ms(self, model: nn.Module, example_inputs: object) -> float:
        return 0.5


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchResult, Path]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)
    ).eval()
    data = [torch.randn(16, 32) for _ in range(2)]
    with torch.no_grad():
        ref = [net(x) for x in data]

    def fidelity(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            c = [
                nn.functional.cosine_similarity(model(x), r).mean()
                for x, r in zip(data, ref, strict=True)
            ]
        return {"cos": float(sum(c) / len(c))}

    res = search(
        net,
        (data, fidelity),
        Budget(max_drop=0.003),
        metric="cos",
        holdout=fidelity,
        presets=["int8-weight", "w4-g128", "w8a8"],
        front_evals=1,
        latency_model=Engine(),
        cache_dir=tmp_path_factory.mktemp("cache"),
        progress=False,
    )
    out = tmp_path_factory.mktemp("report")
    return res, write_report(res, out, model=net, calib_data=data)


def test_report_has_every_section(report: tuple[SearchResult, Path]) -> None:
    res, path = report
    page = path.read_text()
    for sid in SECTIONS:
        assert f'id="{sid}"' in page, sid
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r'(src|href)="https?:', page)  # self-contained
    assert res.chosen.name in page and "int8-weight" in page
    data = json.loads((path.parent / "report.json").read_text())
    assert data["met_budget"] == res.met_budget
    assert set(data["histograms"]) <= set(data["sensitivity"]["layers"])
    # a report re-drawn from its JSON; without histograms it says so
    del data["histograms"]
    again = render(data)
    assert again.count("<section") == page.count("<section")
    assert "no histograms" in again


def test_renders_in_headless_chromium(report: tuple[SearchResult, Path], tmp_path: Path) -> None:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian package `chromium` is not installed (apt-get install -y chromium)")
    png = tmp_path / "shot.png"
    base = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2000",
    ]
    url = report[1].resolve().as_uri()
    subprocess.run([*base, f"--screenshot={png}", url], capture_output=True, timeout=180)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert png.is_file() and png.stat().st_size > 10_000
    from PIL import Image

    img = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert img.shape == (2000, 1280)
    assert float(img.std()) > 10  # not blank
    for sid in SECTIONS:
        assert f'id="{sid}"' in dom.stdout, sid
    assert dom.stdout.count("<img") == 5
