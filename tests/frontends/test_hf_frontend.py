"""``qb.from_pretrained``: Hugging Face models by architecture, never a silently random model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from makers import sentences, tiny_llama_folder, tiny_vit_folder
from safetensors.torch import load_file, save_file

import quantbalance as qb
from quantbalance.errors import AssetMissingError, ModelLoadError
from quantbalance.frontends.hf import from_pretrained

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("hf") / "llama")


def test_causal_lm_loads_by_architecture_with_its_tokenizer(llama: Path) -> None:
    hf = qb.from_pretrained(llama)
    assert hf.kind == "causal-lm" and type(hf.model).__name__ == "LlamaForCausalLM"
    assert hf.info["parameters"] == sum(p.numel() for p in hf.model.parameters())
    direct = transformers.LlamaForCausalLM.from_pretrained(llama).eval()
    ids = hf.processor(sentences(2), padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(hf.model(**ids).logits, direct(**ids).logits)


def test_missing_weights_are_refused_not_randomly_initialised(llama: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(llama, broken)
    sd = load_file(broken / "model.safetensors")
    del sd["model.layers.1.mlp.down_proj.weight"]
    save_file(sd, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"1 tensors missing .*down_proj.*\d+\.\d % of"):
        from_pretrained(broken)
    # A head the checkpoint never had is newly initialised too: refused.
    with pytest.raises(ModelLoadError, match=r"score\.weight"):
        from_pretrained(llama, task="sequence-classification")
    (broken / "model.safetensors").unlink()
    with pytest.raises(AssetMissingError, match="no weights"):
        from_pretrained(broken)


def test_uncached_hub_id_is_not_downloaded() -> None:
    with pytest.raises(AssetMissingError, match="never downloads"):
        from_pretrained("quantbalance-tests/no-such-model")


def test_unknown_architecture_and_kind_are_refused(llama: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(llama, odd)
    cfg = (odd / "config.json").read_text().replace("LlamaForCausalLM", "LlamaForPreTraining")
    (odd / "config.json").write_text(cfg)
    with pytest.raises(ModelLoadError, match="no supported kind"):
        from_pretrained(odd)
    with pytest.raises(qb.ConfigError, match="accepted: causal-lm"):
        from_pretrained(llama, task="translation")


def test_sentence_transformers_folder_is_a_mean_pooled_encoder() -> None:
    from quantbalance.tasks.minilm import load_minilm_model, minilm_model_path, tokenize_sentences

    hf = from_pretrained(minilm_model_path())
    assert hf.kind == "sentence-embedding" and hf.model.encoder.pooler is None
    ref, tok = load_minilm_model()
    batch = tokenize_sentences(tok, sentences(4), 24)
    with torch.no_grad():
        got, want = hf.model(**batch), ref(**batch)
    assert got.shape == (4, 384)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_image_classifier_comes_with_its_image_processor(tmp_path: Path) -> None:
    hf = from_pretrained(tiny_vit_folder(tmp_path / "vit"))
    assert hf.kind == "image-classification"
    assert "ImageProcessor" in type(hf.processor).__name__
    assert hf.model.config.num_labels == 3


def test_qb_load_rebuilds_a_checkpoint_on_an_hf_folder(llama: Path, tmp_path: Path) -> None:
    hf = from_pretrained(llama)
    q = qb.quantize(hf.model, "int8-weight", progress=False)
    path = qb.save(q, tmp_path / "q.safetensors", source=str(llama))
    again = qb.load(path, llama)  # the skeleton by architecture, from the folder
    ids = hf.processor(sentences(2), padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(again(**ids).logits, q(**ids).logits)
