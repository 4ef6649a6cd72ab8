"""Plan.residual_activation: tensor additions rewritten to QuantAdd, calibrated, saved, refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import quantbalance as qb
from quantbalance.deploy import load, save
from quantbalance.deploy.torch_engine import to_torch_engine
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.exports.hf_files import quant_modules
from quantbalance.formats import PerToken, Scheme
from quantbalance.nn import QuantAdd
from quantbalance.plan import ALL_PRESETS, PRESETS, Plan, preset
from quantbalance.tasks.fashion_model import DSResidual, FashionNet


def data(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 1, 28, 28, generator=g) for _ in range(n)]


def small_fashion() -> FashionNet:
    torch.manual_seed(0)
    return FashionNet(width=8).eval()


def test_every_residual_add_of_fashionnet_is_quantized_and_calibrated() -> None:
    q = qb.quantize(small_fashion(), "w8a8-residual", data(3, 0), progress=False)
    adds = {n: m for n, m in q.named_modules() if isinstance(m, QuantAdd)}
    assert sorted(adds) == ["stage1.residual_add0", "stage2.0.residual_add0",
                            "stage2.1.residual_add0", "stage3.0.residual_add0",
                            "stage3.1.residual_add0"]  # fmt: skip
    assert isinstance(q.stage1, DSResidual) and type(q.stage1).__name__ == "DSResidual"
    for m in adds.values():  # frozen ranges from the calibration data
        assert not m.out.observing and float(m.out.scale) not in (0.0, 1.0)
    x = data(1, 1)[0]
    with torch.no_grad():
        got = q(x)
        add = adds["stage1.residual_add0"]
        a, b = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
        want = add.out(add.a(a) + add.b(b))
    assert torch.equal(add(a, b), want)  # the sum of quantized inputs, quantized
    plain = qb.quantize(small_fashion(), "w8a8", data(3, 0), progress=False)
    with torch.no_grad():
        diff = (got - plain(x)).abs().max()
    assert 0 < float(diff) < 0.5 * float(got.abs().max())  # a different, close model


def test_option_off_leaves_model_and_plan_json_unchanged() -> None:
    q = qb.quantize(small_fashion(), "w8a8", data(2, 0), progress=False)
    assert not any(isinstance(m, QuantAdd) for m in q.modules())
    assert "residual_activation" not in preset("w8a8").to_json()
    assert '"residual_activation"' in preset("w8a8-residual").to_json()
    assert "w8a8-residual" in ALL_PRESETS and "w8a8-residual" not in PRESETS  # not on search axes
    again = Plan.model_validate_json(preset("w8a8-residual").to_json())
    assert again == preset("w8a8-residual")
    assert again.table_rows()[-1] == ("(residual additions)", "A int8-per-tensor-asym (static)")
    assert all("residual" not in r for row in preset("w8a8").table_rows() for r in row)


def test_bad_residual_scheme_and_missing_data_are_refused() -> None:
    with pytest.raises(ConfigError, match="residual_activation"):
        Plan(residual_activation=Scheme(8, symmetric=False, granularity=PerToken()))
    with pytest.raises(CalibrationError, match="residual_activation"):
        qb.quantize(
            small_fashion(),
            preset("w8a8-residual").model_copy(
                update={"layers": {"re:.*": qb.LayerSpec(weight=Scheme(8))}}
            ),
            progress=False,
        )


def test_checkpoint_round_trips_the_quantized_adds(tmp_path: Path) -> None:
    q = qb.quantize(small_fashion(), "w8a8-residual", data(3, 0), progress=False)
    path = save(q, tmp_path / "q.safetensors")
    back = load(path, small_fashion())
    assert back.qb_plan == q.qb_plan
    x = data(1, 2)[0]
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
    scales = {n: m.out.scale for n, m in back.named_modules() if isinstance(m, QuantAdd)}
    assert len(scales) == 5 and all(float(s) != 1.0 for s in scales.values())


def test_torch_engine_runs_the_quantized_adds_as_simulated() -> None:
    q = qb.quantize(small_fashion(), "w8a8-residual", data(3, 0), progress=False)
    eng = to_torch_engine(q, compile=False, dtype=torch.float32)
    assert sum(isinstance(m, QuantAdd) for m in eng.modules()) == 5
    x = data(1, 3)[0]
    with torch.no_grad():
        want, got = q(x), eng(x)
    cos = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert float(cos) >= 0.999
    assert torch.equal(got.argmax(1), want.argmax(1))
    fast = to_torch_engine(q, compile=False)  # this CPU's engine dtype (bf16 where native)
    with torch.no_grad():
        got = fast(x).float()
    cos = nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert float(cos) >= 0.99


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent branch: fx cannot trace it
            return y + x
        return y


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = y
        z += x  # y is read again below: an out-of-place sum would change it
        return y * z


class InPlaceResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        out += x  # torchvision's residual form: exact as an out-of-place sum
        return torch.relu(out)


def test_untraceable_model_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedError, match=r"'\(root\)' \(Branchy\) of Branchy.*torch.fx"):
        qb.quantize(Branchy().eval(), "w8a8-residual", data(1, 0), progress=False)
    with pytest.raises(UnsupportedError, match="in-place addition"):
        qb.quantize(InPlace().eval(), "w8a8-residual", data(1, 0), progress=False)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
    with pytest.raises(UnsupportedError, match="TransformerEncoderLayer"):
        qb.quantize(nn.Sequential(layer), "w8a8-residual", [torch.randn(2, 3, 8)],
                    progress=False)  # fmt: skip


def test_in_place_residual_is_rewritten_exactly() -> None:
    torch.manual_seed(0)
    m = InPlaceResidual().eval()
    q = qb.quantize(m, "w8a8-residual", data(2, 0), progress=False)
    add = q.residual_add0
    x = data(1, 1)[0]
    with torch.no_grad():
        want = torch.relu(add(q.conv(x), x))
        assert torch.equal(q(x), want)


def test_weight_only_formats_and_offload_refuse_quantized_adds(tmp_path: Path) -> None:
    q = qb.quantize(small_fashion(), "w8a8-residual", data(2, 0), progress=False)
    with pytest.raises(UnsupportedError, match="residual addition"):
        list(quant_modules(q))
    with pytest.raises(UnsupportedError, match="block by block"):
        qb.quantize(str(tmp_path), "w8a8-residual", data(1, 0), offload="disk",
                    save_to=tmp_path / "out", progress=False)  # fmt: skip


def test_qat_refuses_quantized_adds() -> None:
    batches = [(x, torch.zeros(8, dtype=torch.long)) for x in data(2, 0)]
    with pytest.raises(UnsupportedError, match="qat: residual_activation"):
        qb.qat(small_fashion(), "w8a8-residual", batches, nn.CrossEntropyLoss(), steps=1,
               progress=False)  # fmt: skip
