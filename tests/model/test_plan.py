import json

import pytest

import quantbalance as qb
from quantbalance.errors import ConfigError, PlanError


def test_presets_exist_and_validate() -> None:
    for name in ["int8-weight", "w8a8", "w8a8-dynamic", "w4-g128", "w4a8", "nf4", "w3-g128"]:
        plan = qb.preset(name)
        assert plan.name == name
        spec, key = plan.spec_for("encoder.layer.0.attention.self.query", "Linear")
        assert key == "re:.*" and spec is not None and spec.weight is not None
    assert qb.preset("w8a8-dynamic").layers["re:.*"].act_mode == "dynamic"
    with pytest.raises(ConfigError, match="accepted"):
        qb.preset("w9")


def test_resolution_order_exact_then_regex_then_skip() -> None:
    w4 = qb.LayerSpec(weight=qb.Scheme(4))
    w8 = qb.LayerSpec(weight=qb.Scheme(8))
    # The first matching re: key wins, so the specific pattern comes before the catch-all.
    plan = qb.Plan(layers={"re:mlp\\..*": None, "re:.*": w8, "head": w4}, skip=["re:.*emb.*"])
    cands = {"body": "Linear", "head": "Linear", "mlp.0": "Linear", "emb": "Embedding",
             "conv_emb": "Conv2d"}  # fmt: skip
    resolved = plan.resolve(cands)
    assert resolved == {"body": w8, "head": w4}
    # An Embedding is only quantized when named exactly (or listed in layer_types).
    assert qb.Plan(layers={"emb": w8}).resolve(cands) == {"emb": w8}


def test_unknown_layer_lists_close_matches() -> None:
    plan = qb.Plan(layers={"encoder.layer.0.query": qb.LayerSpec(weight=qb.Scheme(8))})
    with pytest.raises(PlanError, match=r"close matches: encoder\.layer\.0\.attn\.query"):
        plan.resolve({"encoder.layer.0.attn.query": "Linear", "decoder.out": "Linear"})


def test_bad_plan_fields() -> None:
    with pytest.raises(ConfigError, match="unknown field 'layerz'"):
        qb.Plan(layerz={})
    with pytest.raises(ConfigError, match="bad regular expression"):
        qb.Plan(layers={"re:(": qb.LayerSpec(weight=qb.Scheme(8))})
    with pytest.raises(ConfigError, match="act_mode"):
        qb.LayerSpec(weight=qb.Scheme(8), act_mode="sometimes")
    with pytest.raises(ConfigError, match="PerToken"):
        qb.LayerSpec(weight=qb.Scheme(8), activation=qb.Scheme(8, granularity=qb.PerToken()))
    with pytest.raises(ConfigError, match="needs a weight or an activation"):
        qb.LayerSpec()


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_plan_round_trips_through_files(tmp_path, suffix: str) -> None:  # type: ignore[no-untyped-def]
    plan = qb.Plan(
        name="mixed",
        layers={
            "re:.*": qb.LayerSpec(weight=qb.Scheme(8), activation=qb.Scheme(8, symmetric=False,
                                  granularity=qb.PerTensor()), act_observer="percentile"),
            "head": qb.LayerSpec(weight=qb.Scheme(4, kind="nf4", granularity=qb.PerGroup(size=32))),
            "emb": None,
        },
        skip=["re:.*lm_head"],
    )  # fmt: skip
    path = plan.save(tmp_path / f"plan{suffix}")
    assert qb.Plan.load(path) == plan
    if suffix == ".json":
        assert json.loads(path.read_text())["layers"]["head"]["weight"]["kind"] == "nf4"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        qb.Plan.load(bad)


def test_algorithm_args_are_checked_and_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = {"gptq": {"damp": 0.02, "act_order": False, "block_size": 64},
            "awq": {"n_grid": 10, "no_clip": ["q_proj"]}}  # fmt: skip
    spec = qb.LayerSpec(weight=qb.Scheme(4), algorithm="awq+gptq", algorithm_args=args)
    plan = qb.Plan(layers={"re:.*": spec})
    for suffix in (".json", ".yaml"):
        back = qb.Plan.load(plan.save(tmp_path / f"plan{suffix}"))
        assert back == plan and back.layers["re:.*"].algorithm_args == args
    assert hash(spec) == hash(qb.LayerSpec(weight=qb.Scheme(4), algorithm="awq+gptq",
                                           algorithm_args=args))  # fmt: skip
    with pytest.raises(ConfigError, match=r"'gptqq', which has no options.*awq, gptq"):
        qb.LayerSpec(weight=qb.Scheme(4), algorithm_args={"gptqq": {}})
    with pytest.raises(ConfigError, match=r"unknown field 'dampening'(.|\n)*allowed.*damp"):
        qb.LayerSpec(weight=qb.Scheme(4), algorithm_args={"gptq": {"dampening": 0.1}})
    with pytest.raises(ConfigError, match="act_order='yes': Input should be a valid boolean"):
        qb.LayerSpec(weight=qb.Scheme(4), algorithm_args={"gptq": {"act_order": "yes"}})
    with pytest.raises(ConfigError, match="damp=-1: Input should be greater than or equal to 0"):
        qb.LayerSpec(weight=qb.Scheme(4), algorithm_args={"gptq": {"damp": -1}})
