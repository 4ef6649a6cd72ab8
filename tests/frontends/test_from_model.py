"""``qb.tasks.from_model``: the same Task the bundled tasks are, from a model and data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import quantbalance as qb
from quantbalance.search.holdout import split_eval


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def test_torch_model_with_npy_data_is_a_fidelity_task(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    model = _mlp()
    task = qb.tasks.from_model(model, tmp_path / "x.npy", batch_size=5, n_calib=10)
    assert task.info["family"] == "logits" and task.primary_metric == "top1_agreement"
    assert task.n_eval_samples == 30 and len(task.calib_data) == 2
    assert task.reference["top1_agreement"] == 100.0 and task.reference["kl"] == 0.0
    q = qb.quantize(model, "w4a8", task.calib_data, progress=False)
    cmp = qb.compare(model, q, task)
    assert 0 < cmp.quant_metrics["kl"] < 0.05 and cmp.quant_bytes < cmp.float_bytes
    sp = split_eval(task, 15, 15)
    assert sp.search.info["samples"] == [0, 15] and sp.holdout.info["samples"] == [15, 30]
    assert sp.search.evaluate(q) != sp.holdout.evaluate(q)  # different samples


def test_dataloader_with_labels_protects_accuracy() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    model = _mlp()
    with torch.no_grad():  # make the model right on most samples: a readable accuracy
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[2].bias.zero_()
        model[0].weight[0, 0], model[0].weight[1, 1] = 5.0, 5.0
        model[2].weight.copy_(torch.zeros(4, 32))
        model[2].weight[:, 0] = torch.tensor([-1.0, 1.0, -1.0, 1.0])
        model[2].weight[:, 1] = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    task = qb.tasks.from_model(model, loader, labels=True, n_calib=2)
    assert task.primary_metric == "accuracy" and task.n_eval_samples == 6  # batches
    assert task.reference["accuracy"] == 100.0 and task.reference["f1"] == 100.0
    # A model that always answers class k is right on exactly the class-k share of samples.
    shares = []
    for k in range(4):
        const = nn.Linear(6, 4)
        with torch.no_grad():
            const.weight.zero_()
            const.bias.copy_(torch.eye(4)[k])
        shares.append(task.evaluate(const)["accuracy"])
    assert sum(shares) == pytest.approx(100.0) and max(shares) < 100.0
    with pytest.raises(qb.ConfigError, match="not computed for logits outputs"):
        qb.tasks.from_model(model, loader, metric="perplexity")


def test_text_classifier_with_named_labels_from_csv(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from makers import sentences, word_tokenizer

    from quantbalance.frontends.batching import split_samples
    from quantbalance.frontends.data import read_samples

    texts = sentences(30)
    tok = word_tokenizer(texts)
    cfg = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
        id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path / "clf"
    transformers.BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [f'"{t}",{"pos" if "cat" in t else "neg"}' for t in texts]
    (tmp_path / "d.csv").write_text("body,label\n" + "\n".join(rows) + "\n")

    hf = qb.from_pretrained(folder)
    assert hf.kind == "sequence-classification"
    task = qb.tasks.from_model(hf, tmp_path / "d.csv", column="body", labels="label", seq_len=16)
    assert task.primary_metric == "accuracy"
    # The same split by hand: the label names map through the model's label2id.
    split = split_samples(read_samples(tmp_path / "d.csv", "body", "label"))
    enc = tok(split.eval.items, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        pred = hf.model(**enc).logits.argmax(-1)
    want = torch.tensor([cfg.label2id[v] for v in split.eval.labels])
    assert task.reference["accuracy"] == pytest.approx(100 * float((pred == want).float().mean()))


def test_speech_seq2seq_with_feature_tensors(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    cfg = transformers.WhisperConfig(
        vocab_size=60, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8,
        max_source_positions=8, max_target_positions=16, decoder_start_token_id=1,
        pad_token_id=0, eos_token_id=2, bos_token_id=1, suppress_tokens=[],
        begin_suppress_tokens=[],
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.WhisperForConditionalGeneration(cfg).save_pretrained(tmp_path / "whisper")
    hf = qb.from_pretrained(tmp_path / "whisper")
    assert hf.kind == "speech-seq2seq" and hf.processor is None  # no feature extractor saved
    g = torch.Generator().manual_seed(0)
    save_file({"input_features": torch.randn(24, 8, 16, generator=g),
               "decoder_input_ids": torch.randint(3, 60, (24, 6), generator=g)},
              str(tmp_path / "audio.safetensors"))  # fmt: skip
    task = qb.tasks.from_model(hf, tmp_path / "audio.safetensors", batch_size=4)
    assert task.info["family"] == "logits" and task.reference["top1_agreement"] == 100.0
    q = qb.quantize(task.model, "w8a8-dynamic", task.calib_data, progress=False)
    got = task.evaluate(q)
    assert 0.0 < got["kl"] < 1e-3 and got["top1_agreement"] >= 90.0
