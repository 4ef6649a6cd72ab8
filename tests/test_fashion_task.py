"""The ``fashion`` task: idx loader, FashionNet, committed checkpoint, evaluation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

from quantbalance.errors import AssetMissingError, QuantBalanceError
from quantbalance.tasks.fashion import CHECKPOINT, load_fashion, load_fashion_model
from quantbalance.tasks.fashion_data import FILES, fashion_root, load_fashion_mnist
from quantbalance.tasks.fashion_model import FashionNet


def _data_present() -> bool:
    root = fashion_root()
    return all(
        (root / name).is_file() or (root / name.removesuffix(".gz")).is_file()
        for images, labels, _ in FILES.values()
        for name in (images, labels)
    )


needs_data = pytest.mark.skipif(
    not _data_present(),
    reason=f"Fashion-MNIST not found in {fashion_root()}: "
    "`apt-get install dataset-fashion-mnist` or set QB_FASHION_DIR",
)


@pytest.fixture(scope="module")
def fashion_task():
    if not _data_present():
        pytest.skip("Fashion-MNIST missing: `apt-get install dataset-fashion-mnist`")
    return load_fashion()


@needs_data
@pytest.mark.parametrize(("split", "count"), [("train", 60000), ("test", 10000)])
def test_loader_shapes_dtypes_labels(split: str, count: int) -> None:
    x, y = load_fashion_mnist(split)
    assert x.shape == (count, 1, 28, 28)
    assert x.dtype == torch.float32
    assert y.shape == (count,)
    assert y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y, minlength=10).tolist() == [count // 10] * 10
    assert torch.isfinite(x).all()
    if split == "train":  # normalised with the training statistics
        assert abs(float(x.mean())) < 0.01
        assert abs(float(x.std()) - 1.0) < 0.01


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    header = struct.pack(f">I{len(dims)}I", magic, *dims)
    path.write_bytes(gzip.compress(header + payload))


def _write_test_split(
    folder: Path, *, image_magic: int = 0x803, n_bytes: int | None = None
) -> None:
    n = 10000
    body = bytes(n * 28 * 28 if n_bytes is None else n_bytes)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", image_magic, (n, 28, 28), body)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", 0x801, (n,), bytes(n))


def test_loader_reads_a_valid_folder_from_env(tmp_path, monkeypatch) -> None:
    _write_test_split(tmp_path)
    monkeypatch.setenv("QB_FASHION_DIR", str(tmp_path))
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)


def test_loader_rejects_bad_magic(tmp_path, monkeypatch) -> None:
    _write_test_split(tmp_path, image_magic=0x1234)
    monkeypatch.setenv("QB_FASHION_DIR", str(tmp_path))
    with pytest.raises(QuantBalanceError, match=r"magic number 0x00001234, expected 0x00000803"):
        load_fashion_mnist("test")


def test_loader_rejects_truncated_file(tmp_path, monkeypatch) -> None:
    _write_test_split(tmp_path, n_bytes=1000)
    monkeypatch.setenv("QB_FASHION_DIR", str(tmp_path))
    with pytest.raises(QuantBalanceError, match="truncated"):
        load_fashion_mnist("test")


def test_loader_rejects_broken_gzip(tmp_path, monkeypatch) -> None:
    _write_test_split(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])
    monkeypatch.setenv("QB_FASHION_DIR", str(tmp_path))
    with pytest.raises(QuantBalanceError, match="corrupt"):
        load_fashion_mnist("test")


def test_loader_missing_files_says_how_to_get_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QB_FASHION_DIR", str(tmp_path))
    with pytest.raises(AssetMissingError) as info:
        load_fashion_mnist("train")
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "QB_FASHION_DIR" in msg


def test_model_structure_and_parameter_count() -> None:
    model = FashionNet()
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 200_000
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups == m.in_channels == m.out_channels > 1]
    assert depthwise, "needs at least one depthwise convolution"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_committed_checkpoint_is_small_and_loads() -> None:
    assert CHECKPOINT.is_file(), "run `python scripts/train_fashion.py`"
    assert CHECKPOINT.stat().st_size < 5_000_000
    model = load_fashion_model()
    assert not model.training


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(AssetMissingError, match=r"scripts/train_fashion\.py"):
        load_fashion(checkpoint=tmp_path / "absent.safetensors")


def test_task_contract(fashion_task) -> None:
    task = fashion_task
    assert task.name == "fashion" and task.primary_metric == "accuracy"
    assert not task.model.training
    assert len(task.calib_data) == 512 // 64
    assert all(b.shape == (64, 1, 28, 28) for b in task.calib_data)
    assert task.example_inputs.shape == (64, 1, 28, 28)
    assert task.info["n_test"] == 10000


def test_float_accuracy_and_self_agreement(fashion_task) -> None:
    metrics = fashion_task.evaluate(fashion_task.model)
    assert metrics["accuracy"] >= 92.0
    assert metrics["agreement"] == 100.0


@needs_data
def test_n_test_subset_and_agreement_of_a_different_model() -> None:
    task = load_fashion(n_calib=100, calib_batch=64, n_test=500)
    assert task.info["n_test"] == 500
    assert [len(b) for b in task.calib_data] == [64, 36]
    assert task.example_inputs.shape == (64, 1, 28, 28)
    other = FashionNet().eval()  # untrained
    metrics = task.evaluate(other)
    assert metrics["agreement"] < 50.0
    assert metrics["accuracy"] < 50.0
    assert task.evaluate(task.model)["agreement"] == 100.0
