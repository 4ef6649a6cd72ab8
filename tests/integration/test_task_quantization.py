"""One integration test per real task: quantize with presets, check quality against float."""

import shutil
from pathlib import Path

import pytest
import torch

import quantbalance as qb
from quantbalance.cli.loading import DataOptions, load_source


def test_minilm_int8_and_dynamic_w8a8_keep_fidelity() -> None:
    task = qb.tasks.load("minilm", n_eval=64, n_calib=32)
    q8 = qb.quantize(task.model, "int8-weight", progress=False)
    m8 = task.evaluate(q8)
    assert m8["cosine_mean"] >= 0.9995 and m8["top10_overlap"] >= 0.95
    qd = qb.quantize(task.model, "w8a8-dynamic", task.calib_data, progress=False)
    assert task.evaluate(qd)["cosine_mean"] >= 0.998
    # Embeddings are quantized too: the file shrinks close to a quarter.
    assert qb.model_nbytes(q8) < 0.27 * qb.model_nbytes(task.model)


def test_hf_folder_loads_as_an_encoder_task(tmp_path: Path) -> None:
    from quantbalance.tasks.minilm import minilm_model_path

    folder = tmp_path / "my-encoder"
    shutil.copytree(minilm_model_path(), folder)
    (tmp_path / "t.txt").write_text("\n".join(f"Sentence number {i} is here." for i in range(12)))
    task = load_source(hf=str(folder), data=DataOptions(str(tmp_path / "t.txt"), seq_len=16))
    assert task.name == "hf:my-encoder" and task.info["kind"] == "sentence-embedding"
    assert task.primary_metric == "cosine" and task.n_eval_samples == 9


def test_fashion_w8a8_accuracy_drop_small() -> None:
    try:
        task = qb.tasks.load("fashion", n_test=2000)
    except qb.AssetMissingError as e:
        pytest.skip(f"needs the Debian package dataset-fashion-mnist ({e})")
    q = qb.quantize(task.model, "w8a8", task.calib_data, progress=False)
    ref, m = task.reference, task.evaluate(q)
    assert ref["accuracy"] - m["accuracy"] <= 0.5
    assert m["agreement"] >= 98.5
    assert len(q.qb_info.folded) > 5


def test_smollm_w4_g128_perplexity_close_to_float() -> None:
    task = qb.tasks.load("smollm", n_windows=2, window=128, n_calib=1, calib_window=128)
    q = qb.quantize(task.model, "w4-g128", progress=False)
    ppl, ref = task.evaluate(q)["perplexity"], task.reference["perplexity"]
    assert torch.isfinite(torch.tensor(ppl))
    assert ref < ppl < 1.6 * ref
    # 576-wide layers end with a partial group of 64: 5 groups per row.
    q_proj = q.get_submodule("model.layers.0.self_attn.q_proj").qweight
    assert q_proj.scale.shape == (576, 5)
