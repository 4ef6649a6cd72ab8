"""SmolLM2-135M exported to compressed-tensors and GGUF computes what quantbalance simulated."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import quantbalance as qb
from quantbalance.formats.ggml import GGML_SCHEMES

pytest.importorskip("compressed_tensors", reason="needs the PyPI package compressed-tensors")


@pytest.fixture(scope="module")
def smollm():  # type: ignore[no-untyped-def]
    try:
        task = qb.tasks.load("smollm", n_windows=2, window=128, n_calib=1, calib_window=128)
    except qb.AssetMissingError as e:
        pytest.skip(str(e))
    plan = qb.Plan(layers={"re:.*": qb.LayerSpec(weight=GGML_SCHEMES["Q4_0"])},
                   layer_types=["Linear", "Embedding"])  # fmt: skip
    q = qb.quantize(task.model, plan, progress=False)
    ids = task.example_inputs["input_ids"]
    with torch.inference_mode():
        sim = F.log_softmax(q(ids).logits[0].float(), -1)
    return task, q, ids, sim


def test_transformers_loads_the_compressed_tensors_folder(smollm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    task, q, ids, sim = smollm
    res = qb.export(q, tmp_path / "ct", format="compressed-tensors", source=task.info["source"])
    assert res.nbytes < 0.2 * qb.model_nbytes(task.model)  # 4-bit everywhere, fp32 scales
    hf = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "ct"), dtype=torch.float32,
        quantization_config=CompressedTensorsConfig(dequantize=True),  # one group: exact
    ).eval()  # fmt: skip
    with torch.inference_mode():
        got = F.log_softmax(hf(ids).logits[0].float(), -1)
    assert float(F.kl_div(got, sim, log_target=True, reduction="none").sum(-1).mean()) <= 1e-4


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="needs the PyPI package llama-cpp-python"
)
def test_llama_cpp_perplexity_within_one_percent(smollm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from llama_cpp import Llama

    task, q, ids, sim = smollm
    res = qb.export(q, tmp_path / "m.gguf", format="gguf", source=task.info["source"],
                    tokenizer_pre="smollm")  # fmt: skip
    llm = Llama(model_path=str(res.path), logits_all=True, n_ctx=ids.shape[1], n_threads=2,
                type_k=0, type_v=0, verbose=False)  # fmt: skip
    llm.eval(ids[0].tolist())
    cpp = F.log_softmax(torch.tensor(np.array(llm.scores[: ids.shape[1]])), -1)
    target = ids[0, 1:]
    p_sim = math.exp(float(F.nll_loss(sim[:-1], target)))
    p_cpp = math.exp(float(F.nll_loss(cpp[:-1], target)))
    assert abs(p_cpp / p_sim - 1) <= 0.01, (p_sim, p_cpp)
