"""``device=``: calibration on a device, weights back where they were; no CPU-only assumption."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.calibration.batch import move_batch
from quantbalance.calibration.device import (
    computing_on,
    move_module,
    qtensor_to,
    resolve_device,
)
from quantbalance.calibration.sequential import InputStatsCollector
from quantbalance.errors import ConfigError
from quantbalance.nn import QuantModule

transformers = pytest.importorskip("transformers")


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, use_cache=False,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 96, (2, 16), generator=g)} for _ in range(n)]


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("abacus")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_input_statistics_stay_on_the_inputs_device() -> None:
    lin = nn.Linear(8, 4, device="meta")
    stats = InputStatsCollector(absmean=True)
    stats("l", lin, torch.empty(2, 5, 8, device="meta"))
    st = stats.pop("l")
    assert st.gram.is_meta and st.abs_sum is not None and st.abs_sum.is_meta
    assert st.count == 10 and tuple(st.gram.shape) == (8, 8)


def test_move_module_moves_quantized_weights_too() -> None:
    q = qb.quantize(nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 4)), "w4-g128", progress=False)
    q(torch.ones(1, 8))  # fills the dequantized-weight caches
    move_module(q, "meta")
    assert all(p.is_meta for p in q.parameters())
    for m in q.modules():
        if isinstance(m, QuantModule):
            assert m.qweight.packed.is_meta and m.qweight.scale.is_meta and m._w is None
    qt = qb.quantize(nn.Sequential(nn.Linear(8, 16)), "int8-weight", progress=False)[0].qweight
    assert qtensor_to(qt, "cpu") is qt  # already there: the same object


def test_move_batch_keeps_structure() -> None:
    b = {"input_ids": torch.ones(1, 3, dtype=torch.long), "n": 3, "t": (torch.ones(2),)}
    got = move_batch(b, "meta")
    assert got["input_ids"].is_meta and got["t"][0].is_meta and got["n"] == 3
    assert not b["input_ids"].is_meta  # the caller's batch is untouched


def test_computing_on_moves_outside_modules_then_blocks_one_at_a_time() -> None:
    model = tiny_llama()
    blocks = model.model.layers
    # meta has no data to bring back: leaving the block fails, after the checks inside
    with pytest.raises(NotImplementedError, match="meta"), computing_on(model, "meta") as hooks:
        assert model.model.embed_tokens.weight.is_meta and model.lm_head.weight.is_meta
        assert not any(p.is_meta for p in blocks.parameters())  # blocks wait at home
        assert hooks.enter is not None
        hooks.enter("model.layers.0", blocks[0])
        assert all(p.is_meta for p in blocks[0].parameters())
        assert not any(p.is_meta for p in blocks[1].parameters())


@pytest.mark.parametrize("algorithm", ["gptq", "awq"])
def test_device_cpu_runs_the_hooks_and_equals_the_default(algorithm: str) -> None:
    torch.set_num_threads(1)
    model, data = tiny_llama(), batches()
    ref = qb.quantize(model, "w4-g128", data, algorithm=algorithm, progress=False)
    got = qb.quantize(model, "w4-g128", data, algorithm=algorithm, progress=False, device="cpu")
    for (n, a), (_, b) in zip(ref.named_modules(), got.named_modules(), strict=True):
        if isinstance(a, QuantModule):
            assert isinstance(b, QuantModule), n
            assert torch.equal(a.qweight.packed, b.qweight.packed), n
            assert torch.equal(a.qweight.scale, b.qweight.scale), n
    assert all(p.device.type == "cpu" for p in got.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gptq_on_cuda_matches_cpu_and_returns_weights_home() -> None:
    model, data = tiny_llama(), batches()
    ref = qb.quantize(copy.deepcopy(model), "w4-g128", data, algorithm="gptq", progress=False)
    got = qb.quantize(model, "w4-g128", data, algorithm="gptq", progress=False, device="cuda")
    assert all(p.device.type == "cpu" for p in got.parameters())
    same = total = 0
    for (n, a), (_, b) in zip(ref.named_modules(), got.named_modules(), strict=True):
        if isinstance(a, QuantModule):
            assert b.qweight.packed.device.type == "cpu", n
            same += int((a.qweight.codes() == b.qweight.codes()).sum())
            total += a.qweight.codes().numel()
    assert same / total > 0.99  # float reductions differ across devices: a few codes flip
    x = data[0]["input_ids"]
    la, lb = ref(input_ids=x).logits, got(input_ids=x).logits
    assert torch.nn.functional.cosine_similarity(la.flatten(), lb.flatten(), dim=0) > 0.999


def test_nf4_lookups_follow_the_values_device() -> None:
    from quantbalance.formats.nonuniform import NF4_TABLE, nearest_code

    got = nearest_code(torch.empty(3, 5, device="meta"), NF4_TABLE)
    assert got.is_meta and tuple(got.shape) == (3, 5)
    cpu = nearest_code(torch.tensor([[-1.0, 0.0, 1.0]]), NF4_TABLE)
    assert cpu.tolist() == [[0, 7, 15]]


def test_take_hessian_equals_hessian_bit_for_bit() -> None:
    lin = nn.Linear(16, 4)
    stats = InputStatsCollector()
    for _ in range(3):
        stats("l", lin, torch.randn(7, 16) * 3)
    st = stats.pop("l")
    ref = st.hessian()
    assert torch.equal(st.take_hessian(), ref) and st.gram.numel() == 0
