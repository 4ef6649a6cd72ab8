"""Every script in examples/ runs on small local models and data made here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from frontends.makers import digits, image_folder, keras_cnn, text_file, tiny_llama_folder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ort = pytest.importorskip("onnxruntime")
needs_onnx2torch = pytest.mark.skipif(
    importlib.util.find_spec("onnx2torch") is None, reason="needs pip install --no-deps onnx2torch"
)


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_causal_lm_with_a_text_file(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    folder = tiny_llama_folder(tmp_path / "llama")
    data = text_file(tmp_path / "t.txt", 40)
    res = example("hf_causal_lm").main(["--hf", str(folder), "--data", str(data), "--seq-len",
                                        "16", "--out", str(tmp_path / "o"), "--cache-dir",
                                        str(tmp_path / "c")])  # fmt: skip
    assert res.met_budget and res.metric == "perplexity"
    assert json.loads((tmp_path / "o" / "plan.json").read_text())["layers"]


def test_cnn_with_an_image_folder(tmp_path: Path) -> None:
    ex = example("cnn_image_folder")
    data = image_folder(tmp_path / "imgs", n_per_class=12)
    from quantbalance.frontends.batching import batches, make_encoder
    from quantbalance.frontends.data import read_samples

    s = read_samples(data)
    x = batches(s, make_encoder("image"), len(s))[0]
    y = torch.tensor(s.labels)
    torch.manual_seed(0)
    model = ex.build_model(3)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):  # red / green / blue fields: learnt in a few steps
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    save_file(model.state_dict(), str(tmp_path / "cnn.safetensors"))
    res = ex.main(["--weights", str(tmp_path / "cnn.safetensors"), "--data", str(data),
                   "--out", str(tmp_path / "o")])  # fmt: skip
    cmp = res["w8a8"]
    assert cmp.float_metrics["accuracy"] >= 90.0
    assert abs(cmp.quant_metrics["accuracy"] - cmp.float_metrics["accuracy"]) <= 10.0
    sess = ort.InferenceSession(str(tmp_path / "o" / "cnn-w8a8.onnx"))
    out = sess.run(None, {sess.get_inputs()[0].name: x[:4].numpy()})[0]
    assert out.shape == (4, 3)


@needs_onnx2torch
def test_onnx_file_with_npy_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    torch.onnx.export(cnn.eval(), (torch.randn(2, 1, 8, 8),), str(tmp_path / "m.onnx"),
                      dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})  # fmt: skip
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(200, 1, 8, 8)).astype("f4"))
    args = ["--onnx", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "x.npy"), "--max-drop",
            "5", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]  # fmt: skip
    res, path = example("onnx_model").main(args)
    assert res.met_budget
    sess = ort.InferenceSession(str(path))
    feed = {sess.get_inputs()[0].name: np.zeros((3, 1, 8, 8), "f4")}
    assert sess.run(None, feed)[0].shape == (3, 5)


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs quantbalance[keras]")
@needs_onnx2torch
def test_keras_model_file(tmp_path: Path) -> None:
    x_train, x_test, y_train, y_test = digits()
    keras_cnn(x_train, y_train).save(tmp_path / "cnn.keras")
    np.save(tmp_path / "x.npy", x_test)
    np.save(tmp_path / "y.npy", y_test)
    args = ["--keras", str(tmp_path / "cnn.keras"), "--data", str(tmp_path / "x.npy"),
            "--labels", str(tmp_path / "y.npy")]  # fmt: skip
    got = example("keras_model").main(args)
    assert got["float_accuracy"] > 85.0
    assert abs(got["quant_accuracy"] - got["float_accuracy"]) <= 0.5 and got["compression"] > 3.0
