"""The block-by-block pipeline: block discovery, identity, observed inputs, substitutions."""

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from quantbalance.calibration import capture
from quantbalance.calibration.sequential import (
    InputStatsCollector,
    find_blocks,
    input_rows,
    run_sequential,
)
from quantbalance.errors import CalibrationError

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(n)


def tiny_llama(use_cache: bool = False) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        use_cache=use_cache,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.BertModel(cfg, add_pooling_layer=False).eval()


def llama_batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 96, (2, 16), generator=g)} for _ in range(n)]


def last_block_outputs(model: nn.Module, blocks: nn.ModuleList, batches: list) -> list:
    outs: list = []
    h = blocks[-1].register_forward_hook(lambda _m, _i, o: outs.append(o))
    with torch.no_grad():
        for b in batches:
            model(**b)
    h.remove()
    return outs


def test_find_blocks_from_data_and_fallbacks() -> None:
    assert find_blocks(tiny_llama())[0] == "model.layers"  # type: ignore[index]
    assert find_blocks(tiny_bert())[0] == "encoder.layer"  # type: ignore[index]
    assert find_blocks(nn.Sequential(nn.Linear(2, 2))) is None

    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = nn.ModuleList([nn.Linear(2, 2)])
            self.stages = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])

    assert find_blocks(Custom())[0] == "stages"  # type: ignore[index]


def test_identity_when_nothing_is_quantized_llama() -> None:
    m = tiny_llama()
    batches = llama_batches()
    outs = run_sequential(m, batches, {}, progress=False)
    ref = last_block_outputs(m, m.model.layers, batches)
    assert all(torch.equal(a, b) for a, b in zip(outs, ref, strict=True))


def test_identity_with_padding_mask_bert() -> None:
    m = tiny_bert()
    ids = torch.randint(1, 96, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # a padded sentence: the mask must reach every block
    batches = [{"input_ids": ids, "attention_mask": mask}]
    outs = run_sequential(m, batches, {}, progress=False)
    ref = last_block_outputs(m, m.encoder.layer, batches)
    assert torch.equal(outs[0], ref[0])


def test_observed_inputs_match_a_plain_run() -> None:
    m = tiny_llama()
    batches = llama_batches()
    names = ["model.layers.1.self_attn.q_proj", "model.layers.2.mlp.down_proj", "lm_head"]
    mods = {n: m.get_submodule(n) for n in names}
    seq = InputStatsCollector(absmean=True)
    run_sequential(m, batches, mods, seq, progress=False)
    plain = InputStatsCollector(absmean=True)
    capture(m, mods, batches, lambda n, mod, inp, _o: plain(n, mod, inp[0]), progress=False)
    for n in names:  # lm_head lies outside the blocks: observed in the replay pass
        a, b = seq.pop(n), plain.pop(n)
        assert a.count == b.count == 3 * 2 * 16
        torch.testing.assert_close(a.hessian(), b.hessian(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.abs_mean(), b.abs_mean())


def test_replacement_weights_feed_later_blocks_and_are_restored() -> None:
    m = tiny_llama()
    batches = llama_batches(2)
    name = "model.layers.0.mlp.down_proj"
    before = m.get_submodule(name).weight.detach().clone()
    head_inputs = InputStatsCollector()
    calls: list[list[str]] = []

    def finish(names: list[str]) -> dict[str, torch.Tensor]:
        calls.append(names)
        return {name: torch.zeros_like(before)} if name in names else {}

    mods = {n: m.get_submodule(n) for n in (name, "lm_head")}
    outs = run_sequential(m, batches, mods, head_inputs, finish, progress=False)
    assert calls == [[name], ["lm_head"]]
    assert torch.equal(m.get_submodule(name).weight, before)
    edited = copy.deepcopy(m)
    with torch.no_grad():
        edited.get_submodule(name).weight.zero_()
    ref = last_block_outputs(edited, edited.model.layers, batches)
    assert all(torch.equal(a, b) for a, b in zip(outs, ref, strict=True))
    plain = InputStatsCollector()
    head = {"lm_head": edited.lm_head}
    capture(edited, head, batches, lambda n, mod, i, _o: plain(n, mod, i[0]), progress=False)
    torch.testing.assert_close(head_inputs.pop("lm_head").gram, plain.pop("lm_head").gram)


def test_replayed_blocks_get_no_kv_cache() -> None:
    """A model with ``use_cache=True`` (as most LLM folders ship): each block runs twice (observe,
    then with its replaced weights); a cache passed through would make the second run attend over
    the first run's keys as well and feed the next block wrong inputs (Transformers 5 names the
    argument ``cache``)."""
    m = tiny_llama(use_cache=True)
    batches = llama_batches(2)
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(3) for p in ("k_proj", "v_proj")]
    mods = {n: m.get_submodule(n) for n in names}

    def finish(done: list[str]) -> dict[str, torch.Tensor]:
        return {n: 0.5 * mods[n].weight.detach() for n in done}  # new keys and values

    outs = run_sequential(m, batches, mods, None, finish, progress=False)
    edited = copy.deepcopy(m)
    with torch.no_grad():
        for n in names:
            edited.get_submodule(n).weight.mul_(0.5)
    ref = last_block_outputs(edited, edited.model.layers, batches)
    for a, b in zip(outs, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_model_without_blocks_is_one_block() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 6)
    stats = InputStatsCollector()
    outs = run_sequential(m, [x], {"2": m[2]}, stats, progress=False)
    assert torch.equal(outs[0], m(x))
    h = torch.relu(m[0](x))
    torch.testing.assert_close(stats.pop("2").hessian(), (2 * h.T @ h / 5).float())


def test_block_list_that_is_not_called_runs_as_one_block() -> None:
    class Indexed(nn.Module):  # blocks are ModuleDicts, indexed but never called
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.ModuleDict({"fc": nn.Linear(4, 4)}) for _ in range(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for blk in self.layers:
                x = torch.tanh(blk["fc"](x))
            return x

    m = Indexed().eval()
    x = torch.randn(3, 4)
    stats = InputStatsCollector()
    outs = run_sequential(m, [x], {"layers.1.fc": m.layers[1]["fc"]}, stats, progress=False)
    assert torch.equal(outs[0], m(x)) and stats.pop("layers.1.fc").count == 3


def test_batch_that_does_not_fit_is_a_calibration_error() -> None:
    m = tiny_llama()
    with pytest.raises(CalibrationError, match="batch 0"):
        run_sequential(m, [{"input_ids": torch.zeros(2, 4), "bogus": 1}], {}, progress=False)


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.Conv1d(3, 4, 3)])
def test_conv_rows_reproduce_the_convolution(conv: nn.Module) -> None:
    x = torch.randn(2, 3, 7, 7) if isinstance(conv, nn.Conv2d) else torch.randn(2, 3, 9)
    rows = input_rows(conv, x)
    assert rows is not None
    y = rows @ conv.weight.reshape(4, -1).T + conv.bias  # (B·L, out)
    ref = conv(x).flatten(2).transpose(1, 2).reshape(-1, 4)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert input_rows(nn.Conv2d(4, 4, 3, groups=4), torch.randn(1, 4, 5, 5)) is None
