"""Tiny local models and data files the frontends tests (and examples' tests) build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

_TEXT = (
    "the cat sat on a mat while dogs ran in parks and birds sang over quiet green hills near "
    "old towns where people read books drink tea and talk about weather"
)
WORDS = _TEXT.split()


def sentences(n: int = 48, seed: int = 0) -> list[str]:
    """``n`` distinct pseudo-English sentences of 6-12 words."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        s = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 13))))
        if s not in out:
            out.append(s)
    return out


def text_file(path: Path, n: int = 48) -> Path:
    """A text file with one sentence a line."""
    path.write_text("\n".join(sentences(n)) + "\n")
    return path


def word_tokenizer(texts: list[str]):
    """A word-level fast tokenizer trained on ``texts`` (offline, < 100 tokens)."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<s>", "</s>"])
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")  # fmt: skip


def tiny_llama_folder(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer, 32-wide Llama causal LM with its tokenizer, saved to ``folder``."""
    transformers = pytest.importorskip("transformers")
    tok = word_tokenizer(sentences(200))
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_vit_folder(folder: Path, seed: int = 0, image_size: int = 16) -> Path:
    """A random 2-layer ViT image classifier (3 classes) with its image processor."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(
        image_size=image_size, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=3,
        id2label={0: "red", 1: "green", 2: "blue"}, label2id={"red": 0, "green": 1, "blue": 2},
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.ViTForImageClassification(cfg).save_pretrained(folder)
    proc = transformers.ViTImageProcessor(size={"height": image_size, "width": image_size})
    proc.save_pretrained(folder)
    return folder


def image_folder(folder: Path, n_per_class: int = 8, size: int = 16, seed: int = 0) -> Path:
    """PNG images in class subfolders ``red/``, ``green/``, ``blue/`` (noisy colour fields)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(("red", "green", "blue")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 90, size=(size, size, 3))
            arr[..., c] += 150
            Image.fromarray(arr.astype(np.uint8)).save(folder / name / f"{i}.png")
    return folder


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # (N, 8, 8, 1), Keras's NHWC
    return train_test_split(x, d.target, test_size=0.25, random_state=0, stratify=d.target)


def keras_cnn(x: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    from quantbalance.frontends.keras_in import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Conv2D(16, 3, activation="relu"),
        layers.Conv2D(16, 3, activation="relu"),
        layers.Flatten(),
        layers.Dense(32, activation="relu"),
        layers.Dense(10),
    ])  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(5e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    return model
