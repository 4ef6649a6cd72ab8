"""The floor: ``quantbalance search --hf <folder> --data <file> --max-drop 1%`` with no user Python,
for a causal LM, a BERT sentence encoder and an image classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from makers import image_folder, text_file, tiny_llama_folder, tiny_vit_folder
from typer.testing import CliRunner

from quantbalance.cli.main import app

pytest.importorskip("transformers")
runner = CliRunner()


def _search(tmp_path: Path, folder: Path, data: Path, *extra: str) -> dict:
    out = tmp_path / "out"
    args = ["search", "--hf", str(folder), "--data", str(data), "--max-drop", "1%",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *extra]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "on the held-out split" in r.output and "data: " in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["met_budget"] is True
    assert report["chosen"]["nbytes"] < report["float"]["nbytes"]
    data = report["info"]["data"]
    assert data["overlap"] == 0 and data["holdout"][0] >= data["search"][1]  # disjoint halves
    return report


def test_causal_lm_folder_and_text_file(tmp_path: Path) -> None:
    folder = tiny_llama_folder(tmp_path / "llama")
    report = _search(tmp_path, folder, text_file(tmp_path / "t.txt", 40), "--seq-len", "16")
    assert report["metric"] == "perplexity" and report["higher_is_better"] is False
    assert report["info"]["data"]["n_calib"] == 10 and report["info"]["data"]["n_eval"] == 30


def test_image_classifier_folder_and_image_folder(tmp_path: Path) -> None:
    folder = tiny_vit_folder(tmp_path / "vit")
    report = _search(tmp_path, folder, image_folder(tmp_path / "imgs"), "--batch-size", "4")
    assert report["metric"] == "top1_agreement" and report["reference"]["top1_agreement"] == 100


def test_image_classifier_with_folder_labels_protects_accuracy(tmp_path: Path) -> None:
    folder = tiny_vit_folder(tmp_path / "vit")
    r = runner.invoke(app, ["quantize", "--hf", str(folder), "--data",
                            str(image_folder(tmp_path / "imgs")), "--labels", "folders",
                            "--preset", "w8a8", "--out", str(tmp_path / "q")])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "q" / "result.json").read_text())
    assert res["primary_metric"] == "accuracy"
    assert set(res["float"]["metrics"]) >= {"accuracy", "f1", "top1_agreement", "kl"}


@pytest.mark.slow  # the real 22M-parameter encoder: ~1 min on 2 busy cores
def test_bert_sentence_encoder_package_folder(tmp_path: Path) -> None:
    from quantbalance.tasks.minilm import minilm_model_path

    report = _search(tmp_path, minilm_model_path(), text_file(tmp_path / "t.txt", 16),
                     "--seq-len", "12", "--measure", "16", "--max-evals", "3")  # fmt: skip
    assert report["metric"] == "cosine"


def test_hf_without_data_says_what_to_give(tmp_path: Path) -> None:
    folder = tiny_llama_folder(tmp_path / "llama")
    r = runner.invoke(app, ["search", "--hf", str(folder), "--max-drop", "1%",
                            "--out", str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 2 and "need --data FILE" in r.output
