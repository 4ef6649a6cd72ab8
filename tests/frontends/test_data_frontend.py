"""Data in the forms users keep it, and a seeded calibration / evaluation split without overlap."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from makers import image_folder, sentences
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from quantbalance.errors import AssetMissingError, ConfigError
from quantbalance.frontends.batching import batches, label_batches, make_encoder, split_samples
from quantbalance.frontends.data import Samples, read_samples


def test_text_jsonl_csv(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    assert read_samples(tmp_path / "a.txt").items == ["first line", "second line"]
    rows = [{"text": "good day", "label": "pos"}, {"text": "", "label": "neg"},
            {"text": "bad day", "label": "neg"}]  # fmt: skip
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = read_samples(tmp_path / "b.jsonl", labels="label")
    assert (s.items, s.labels) == (["good day", "bad day"], ["pos", "neg"])
    (tmp_path / "c.csv").write_text("id,body\n1,hello there\n2,general kenobi\n")
    assert read_samples(tmp_path / "c.csv", column="body").items[1] == "general kenobi"
    with pytest.raises(ConfigError, match=r"which column holds the text.*'id', 'body'"):
        read_samples(tmp_path / "c.csv")
    with pytest.raises(ConfigError, match=r"no column 'txt' \(--column\); columns: id, body"):
        read_samples(tmp_path / "c.csv", column="txt")
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ConfigError, match=r"d\.jsonl:2: not JSON"):
        read_samples(tmp_path / "d.jsonl")


def test_tensors_from_npy_and_safetensors(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    np.save(tmp_path / "x.npy", arr)
    s = read_samples(tmp_path / "x.npy")
    assert s.kind == "tensor" and len(s) == 4 and torch.equal(s.items[3], torch.from_numpy(arr[3]))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="not a plain numeric"):
        read_samples(tmp_path / "obj.npy")  # never unpickled
    ids, lab = torch.arange(12).reshape(3, 4), torch.tensor([2, 0, 1])
    save_file({"input_ids": ids, "attention_mask": torch.ones(3, 4), "labels": lab},
              str(tmp_path / "t.safetensors"))  # fmt: skip
    s = read_samples(tmp_path / "t.safetensors")
    assert s.labels == [2, 0, 1] and torch.equal(s.items[1]["input_ids"], ids[1])
    b = batches(s, make_encoder("tensor"), 2)
    assert torch.equal(b[0]["input_ids"], ids[:2]) and b[1]["attention_mask"].shape == (1, 4)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    s = read_samples(image_folder(tmp_path / "imgs", n_per_class=2, size=8))
    assert s.kind == "image" and len(s) == 6 and s.classes == ["blue", "green", "red"]
    assert s.labels == [0, 0, 1, 1, 2, 2]
    x = batches(s, make_encoder("image"), 4)[0]
    assert x.shape == (4, 3, 8, 8) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x[0, 2].mean()) > float(x[0, 0].mean())  # blue images: channel 2 dominates


def test_dataloader_pairs_and_input_fn() -> None:
    ds = TensorDataset(torch.randn(10, 3), torch.arange(10))
    s = read_samples(DataLoader(ds, batch_size=4))
    assert s.kind == "batch" and len(s) == 3 and s.items[0].shape == (4, 3)
    assert torch.equal(torch.cat(label_batches(s, 4, None)), torch.arange(10))
    s = read_samples(DataLoader(ds, batch_size=5), input_fn=lambda b: b[0] * 2)
    assert s.labels is None and torch.equal(s.items[1], ds.tensors[0][5:] * 2)


def test_datasets_without_the_package_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(AssetMissingError, match=r"pip install 'quantbalance\[datasets\]'"):
        read_samples(tmp_path / "ds")
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(AssetMissingError, match="datasets"):
        read_samples(tmp_path / "x.parquet")


def test_unknown_and_missing_sources(tmp_path: Path) -> None:
    with pytest.raises(AssetMissingError, match="no such file"):
        read_samples(tmp_path / "nope.txt")
    (tmp_path / "m.xlsx").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"unknown format \.xlsx; accepted: \.txt"):
        read_samples(tmp_path / "m.xlsx")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="no samples"):
        read_samples(tmp_path / "empty.txt")


def test_split_is_seeded_disjoint_and_drops_duplicates() -> None:
    texts = sentences(30)
    s = Samples(texts + texts[:5], "text", source="mine")  # 5 lines repeated
    a, b = split_samples(s, n_calib=10, seed=1), split_samples(s, n_calib=10, seed=1)
    assert a.calib.items == b.calib.items and a.eval.items == b.eval.items
    assert set(a.calib.items).isdisjoint(a.eval.items)
    dup = a.report["eval_dropped_as_duplicates"]
    assert len(a.calib.items) + len(a.eval.items) + dup == 35 and a.report["n_eval"] == 25 - dup
    assert split_samples(s, n_calib=10, seed=2).calib.items != a.calib.items
    capped = split_samples(s, num_samples=12, seed=1)
    assert capped.report["n_calib"] == 3 and len(capped.calib) + len(capped.eval) <= 12
    with pytest.raises(ConfigError, match="need 1 <= n_calib <= 10"):
        split_samples(Samples(texts[:12], "text"), n_calib=11)
