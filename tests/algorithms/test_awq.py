"""AWQ: scale groups from data and tracing, folding is the identity, search and clipping help."""

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.algorithms.awq import (
    apply_awq,
    awq_clip,
    awq_options,
    awq_search,
    clip_weight,
    output_error,
    run_awq,
)
from quantbalance.algorithms.mapping import (
    ScaleGroup,
    check_group,
    find_scale_groups,
    fold_scales,
    trace_scale_groups,
)
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.formats import PerChannel, PerGroup, Scheme, fake_quantize

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(n)


def tiny_llama(kv_heads: int) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64,
        use_cache=False,
    )  # fmt: skip
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so folding has something to change
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64,
    )  # fmt: skip
    m = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():  # non-zero biases, so folding must scale them too
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    return m


def fold_random_scales(model: nn.Module, groups: list[ScaleGroup]) -> None:
    g = torch.Generator().manual_seed(5)
    for grp in groups:
        width = model.get_submodule(grp.linear_names[0]).in_features
        fold_scales(model, grp, torch.exp(torch.randn(width, generator=g)))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_llama_groups_and_folding_is_identity(kv_heads: int) -> None:
    m = tiny_llama(kv_heads)
    groups = find_scale_groups(m)
    prevs = [g.prev_op.removeprefix("model.layers.0.") for g in groups[: len(groups) // 2]]
    expected = ["input_layernorm", "self_attn.v_proj", "post_attention_layernorm", "mlp.up_proj"]
    if kv_heads != 4:  # grouped-query attention: v_proj and o_proj widths differ
        expected.remove("self_attn.v_proj")
    assert prevs == expected and len(groups) == 2 * len(expected)
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids).logits
        fold_random_scales(m, groups)
        torch.testing.assert_close(m(ids).logits, ref, atol=1e-5, rtol=1e-5)


def test_a_pattern_that_does_not_fold_is_dropped() -> None:
    class OnePlusNorm(nn.Module):  # Gemma-style: scales by (1 + w), so w / s is no fold
        def __init__(self, width: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.rand(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)

    m = tiny_llama(4)
    for layer in m.model.layers:
        layer.input_layernorm = OnePlusNorm(32)
    batch = {"input_ids": torch.randint(0, 96, (1, 8))}
    unverified = {g.prev_op.split(".")[-1] for g in find_scale_groups(m)}
    verified = {g.prev_op.split(".")[-1] for g in find_scale_groups(m, batch)}
    assert unverified - verified == {"input_layernorm"}


def test_bert_only_value_to_output_dense() -> None:
    m = tiny_bert()
    groups = find_scale_groups(m)
    assert [g.prev_op for g in groups] == [
        f"encoder.layer.{i}.attention.self.value" for i in (0, 1)
    ]
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids).last_hidden_state
        fold_random_scales(m, groups)
        torch.testing.assert_close(m(ids).last_hidden_state, ref, atol=1e-5, rtol=1e-5)


class PreNorm(nn.Module):
    """norm -> (a, b), unknown to the tables; ``post_norm``: the norm also feeds a residual."""

    def __init__(self, post_norm: bool = False, outlier: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(64)
        self.a, self.b, self.out = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 16)
        self.post_norm = post_norm
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)
            self.norm.weight[7] = outlier  # one input channel with large activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        y = self.a(h) + torch.relu(self.b(h))
        return self.out(y + h if self.post_norm else y)


def test_traced_fallback_keeps_only_verified_pairs() -> None:
    x = torch.randn(8, 64)
    assert trace_scale_groups(PreNorm(), x) == [ScaleGroup("norm", ("a", "b"))]
    assert find_scale_groups(PreNorm(), x) == [ScaleGroup("norm", ("a", "b"))]
    assert trace_scale_groups(PreNorm(post_norm=True), x) == []  # residual use: rejected
    tied = PreNorm()
    tied.b.weight = tied.a.weight
    assert "tied" in str(check_group(tied, ScaleGroup("norm", ("a", "b"))))


def test_search_scales_up_the_outlier_channel() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g)
    x[:, 7] *= 30
    w = torch.randn(48, 64, generator=g)
    moment, mean = x.T @ x / 512, x.abs().mean(0)
    scheme = Scheme(3, granularity=PerGroup(size=32))
    res = awq_search([w], [scheme], moment, mean)
    assert res.alpha > 0 and res.error < 0.8 * res.error_identity
    assert int(res.scales.argmax()) == 7
    rtn_err = float(output_error(w - fake_quantize(w, scheme), moment).sum())
    assert res.error_identity == pytest.approx(rtn_err, rel=1e-5)  # alpha = 0 is round to nearest
    assert awq_search([w], [None], moment, mean).error == 0  # float layers add no error


@pytest.mark.parametrize("gran", [PerGroup(size=32), PerChannel()])
def test_clipping_never_increases_the_block_error(gran: PerGroup | PerChannel) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 80, generator=g)
    w = torch.randn(24, 80, generator=g)
    w[0, 5] = 12.0  # a weight outlier: its block gains from a shrunk range
    scheme = Scheme(3, symmetric=False, granularity=gran)
    moment = x.T @ x / 256
    ratios = awq_clip(w, moment, scheme)
    assert ratios.shape == qb.quantize_tensor(w, scheme).scale.shape
    assert float(ratios.min()) >= 0.5 and float(ratios.max()) <= 1.0
    clipped = clip_weight(w, ratios, scheme)
    err = output_error(w - fake_quantize(clipped, scheme), moment).sum()
    assert err < output_error(w - fake_quantize(w, scheme), moment).sum()


def test_awq_then_rtn_and_gptq_beat_rtn() -> None:
    m = PreNorm(outlier=20.0).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(64, 64, generator=g) for _ in range(4)]
    test = torch.randn(256, 64, generator=g)
    spec = qb.LayerSpec(weight=Scheme(3, symmetric=False, granularity=PerGroup(size=32)))
    plan = qb.Plan(layers={"re:.*": spec})
    with torch.no_grad():
        ref = m(test)
        err = {}
        for alg in ("rtn", "awq", "awq+gptq"):
            q = qb.quantize(m, plan, calib_data=calib, algorithm=alg, progress=False)
            err[alg] = float((q(test) - ref).square().mean())
    assert err["awq"] < 0.8 * err["rtn"] and err["awq+gptq"] < 0.8 * err["rtn"]
    assert q.qb_info.algorithm_log["awq"]["groups"] == 1
    assert set(q.qb_info.algorithm_log["gptq"]) == {"a", "b", "out"}


def test_run_awq_returns_data_that_apply_awq_reproduces() -> None:
    m = PreNorm(outlier=20.0).eval()
    calib = [torch.randn(64, 64, generator=torch.Generator().manual_seed(1))]
    scheme = Scheme(3, symmetric=False, granularity=PerGroup(size=32))
    searched, replayed = copy.deepcopy(m), copy.deepcopy(m)
    res = run_awq(searched, dict.fromkeys(["a", "b", "out"], scheme), ["a", "b", "out"], calib)
    ((group, scales),) = res.scales
    assert group == ScaleGroup("norm", ("a", "b")) and int(scales.argmax()) == 7
    assert set(res.clips) == {"a", "b", "out"}
    apply_awq(replayed, res)
    for (n, p), q in zip(searched.named_parameters(), replayed.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_awq_keeps_float_function_before_quantization() -> None:
    m = tiny_llama(4)
    calib = [
        {"input_ids": torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))}
    ]
    ids = calib[0]["input_ids"]
    plan = qb.Plan(layers={"re:.*": qb.LayerSpec(weight=Scheme(8, granularity=PerChannel()))})
    with awq_options(clip=False):  # scaling alone is the identity in float
        q = qb.quantize(m, plan, calib_data=calib, algorithm="awq", progress=False)
    assert q.qb_info.algorithm_log["awq"]["groups"] == 8  # 4 groups x 2 blocks
    with torch.no_grad():
        torch.testing.assert_close(q(ids).logits, m(ids).logits, atol=2e-2, rtol=0)


def test_unpairable_model_and_missing_data_are_named() -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with pytest.raises(UnsupportedError, match=r"awq: none of the 2 layer\(s\).*0, 2.*traced"):
        qb.quantize(mlp, bitwidths=[4, 4], calib_data=[torch.randn(4, 8)], algorithm="awq",
                    progress=False)  # fmt: skip
    with pytest.raises(CalibrationError, match="awq"):
        qb.quantize(mlp, bitwidths=[4, 4], algorithm="awq", progress=False)
    with pytest.raises(ConfigError, match="max_shrink"), awq_options(max_shrink=1.5):
        pass


def test_plan_algorithm_args_override_awq_options() -> None:
    m = tiny_llama(4)
    calib = [
        {"input_ids": torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(2))}
    ]
    ids = calib[0]["input_ids"]
    scheme = Scheme(8, granularity=PerChannel())
    no_clip = qb.Plan(
        layers={"re:.*": qb.LayerSpec(weight=scheme, algorithm_args={"awq": {"clip": False}})}
    )
    q = qb.quantize(m, no_clip, calib_data=calib, algorithm="awq", progress=False)
    assert q.qb_info.algorithm_log["awq"]["clipped_layers"] == 0
    with torch.no_grad():  # scaling alone is the identity in float
        torch.testing.assert_close(q(ids).logits, m(ids).logits, atol=2e-2, rtol=0)
    clip = qb.Plan(
        layers={"re:.*": qb.LayerSpec(weight=scheme, algorithm_args={"awq": {"clip": True}})}
    )
    with awq_options(clip=False):  # the Plan's per-layer args win over the context's
        q = qb.quantize(m, clip, calib_data=calib, algorithm="awq", progress=False)
    assert q.qb_info.algorithm_log["awq"]["clipped_layers"] > 0
