"""Parents with fused fast paths still run their quantized children's forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantbalance as qb


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


@pytest.mark.parametrize("preset", ["w8a8", "int8-weight"])
def test_transformer_encoder_fast_path_cannot_skip_quantized_layers(preset: str) -> None:
    """In eval mode nn.TransformerEncoderLayer computes from its children's weights in one fused
    kernel: static activation quantizers would never see data (calibration failed) and the
    simulation would silently drop them. With quantized children it takes the ordinary path."""
    model = _encoder()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(4, 6, 32, generator=g) for _ in range(2)]
    q = qb.quantize(model, preset, calib, progress=False)
    assert {"layers.0.linear1", "layers.1.linear2"} <= set(q.qb_info.layers)
    x = torch.randn(3, 6, 32, generator=g)
    with torch.no_grad():
        fast_allowed = q(x)
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            ordinary = q(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    # (MultiheadAttention's own fused kernel follows the global switch: float rounding apart)
    torch.testing.assert_close(fast_allowed, ordinary, rtol=0, atol=1e-5)
    with torch.no_grad():  # and the quantizers are really in the output (not the float model)
        assert float((ordinary - model(x)).abs().max()) > 1e-4
