"""qb.qat: quantization-aware training with learned step sizes (LSQ, Esser et al. 2020).

A workflow above ``qb.quantize`` (which it starts from), not an algorithm step.

``qat`` starts from post-training quantization (round to nearest, calibrated activation ranges),
replaces each planned layer by a fake-quantized twin whose weight and static activation scales
are trainable, fine-tunes everything, and converts back to the same quantized modules
``qb.quantize`` builds: ``QuantizedTensor`` weights encoded with the learned scales and frozen
``ActQuantizer``\\ s holding the learned activation scales.

Fake quantization is ``formats.fake_quantize`` (the one straight-through estimator); its
gradient with respect to the scale is LSQ's. Each scale's gradient is multiplied by LSQ's
``g = 1 / sqrt(n · Q_p)`` (``n`` elements per scale, ``Q_p`` the largest positive level).
Zero points (asymmetric activations) stay at their calibrated values.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from quantbalance.args import checked
from quantbalance.calibration import FixedObserver, call_model, check_calib_data
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.formats import Scheme, fake_quantize, quantize_tensor
from quantbalance.formats.uniform import store_scale
from quantbalance.nn import ActQuantizer, QuantModule, quantized_type, weight_matrix
from quantbalance.nn.layout import from_matrix, layout_of, to_matrix
from quantbalance.plan import LayerSpec, Plan
from quantbalance.quantize import as_plan, quantize
from quantbalance.transform import fold_batchnorm, quantizable_layers, replace_module

log = logging.getLogger(__name__)


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity in the forward pass; gradient multiplied by ``g`` (LSQ's scale gradient).

    Args:
        x: a tensor.
        g: gradient factor.

    Returns:
        ``x`` with a scaled gradient.
    """
    return (x - x * g).detach() + x * g


def _learnable(scheme: Scheme | None) -> bool:
    return scheme is not None and scheme.format_kind.affine(scheme)


def _qp(scheme: Scheme) -> float:
    return float(scheme.qmax if scheme.symmetric else scheme.qmax - scheme.qmin)


class LSQLayer(nn.Module):
    """A float layer with fake-quantized weight and input and learnable scales.

    Args:
        module: the float layer (trained in place).
        spec: its LayerSpec.
        ptq: the post-training quantized layer, for the initial scales and zero points.
    """

    def __init__(self, module: nn.Module, spec: LayerSpec, ptq: QuantModule) -> None:
        super().__init__()
        assert spec.weight is not None
        self.module, self.spec = module, spec
        qw = ptq.qweight
        self.w_scale = None
        self.register_buffer("w_zp", None if qw.zero_point is None else qw.zero_point.float())
        if _learnable(spec.weight) and qw.scale is not None:
            self.w_scale = nn.Parameter(qw.scale.detach().float().clone())
        act = ptq.input_quantizer
        self.a_scale = None
        self.dynamic = None
        self.register_buffer("a_zp", None)
        if act is not None and act.mode == "static":
            self.a_scale = nn.Parameter(act.scale.detach().float().clone())
            self.a_zp = None if act.scheme.symmetric else act.zero_point.float()
        elif act is not None:
            self.dynamic = copy.deepcopy(act)

    def quantized_weight(self) -> torch.Tensor:
        """The fake-quantized weight, in the module's weight shape."""
        w = self.module.weight
        layout = layout_of(self.module) or "rows"
        w2d = to_matrix(layout, w)
        scheme = self.spec.weight
        assert scheme is not None
        if self.w_scale is None:
            return from_matrix(layout, fake_quantize(w2d, scheme), w.shape)
        g = 1.0 / math.sqrt(w2d.numel() / self.w_scale.numel() * _qp(scheme))
        s = grad_scale(self.w_scale.clamp(min=1e-8), g)
        return from_matrix(layout, fake_quantize(w2d, scheme, s, self.w_zp), w.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the layer on the fake-quantized input with the fake-quantized weight."""
        if self.a_scale is not None:
            scheme = self.spec.activation
            assert scheme is not None
            per_sample = x[0].numel() if x.dim() > 1 else x.numel()  # LSQ: features per sample
            g = 1.0 / math.sqrt(per_sample * _qp(scheme))
            x = fake_quantize(x, scheme, grad_scale(self.a_scale.clamp(min=1e-8), g), self.a_zp)
        elif self.dynamic is not None:
            x = self.dynamic(x)
        return torch.func.functional_call(self.module, {"weight": self.quantized_weight()}, (x,))

    def convert(self) -> QuantModule:
        """The quantized module with the learned scales (same type ``qb.quantize`` builds).

        Returns:
            A QuantModule.
        """
        scheme = self.spec.weight
        assert scheme is not None
        w2d = weight_matrix(self.module)
        obs = None
        if self.w_scale is not None:
            zp = None if self.w_zp is None else self.w_zp.round().to(torch.int32)
            obs = FixedObserver(store_scale(self.w_scale.detach(), scheme), zp, scheme.granularity)
        qt = quantize_tensor(w2d, scheme, obs)
        act = None
        spec = self.spec
        if self.dynamic is not None:
            act = self.dynamic
        elif self.a_scale is not None and spec.activation is not None:
            act = ActQuantizer(spec.activation, "static", spec.act_observer)
            act.scale = store_scale(self.a_scale.detach(), spec.activation).reshape(())
            if self.a_zp is not None:
                act.zero_point = self.a_zp.round().to(torch.int32).reshape(())
            act.observing, act.observer = False, None
        qtype = quantized_type(self.module)
        assert qtype is not None
        return qtype.from_float(self.module, qt, act)


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    raise CalibrationError(
        f"qat: training batches must be (inputs, target) pairs, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, tuple | list) else "")
    )


@checked
def qat(
    model: nn.Module,
    plan: Plan | str | dict[str, Any],
    train_data: Iterable[Any],
    loss_fn: Callable[[Any, Any], torch.Tensor],
    steps: int | None = None,
    epochs: float | None = None,
    lr: float = 1e-4,
    calib_data: Iterable[Any] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Quantization-aware fine-tuning with learned step sizes; ``model`` is not modified.

    Args:
        model: the float model.
        plan: a Plan, preset name, dict or plan file (its ``algorithm`` is replaced by LSQ
            fine-tuning from a round-to-nearest start).
        train_data: re-iterable ``(inputs, target)`` batches (``inputs`` follow the batch
            convention: Tensor, tuple or dict); e.g. a DataLoader or a list.
        loss_fn: ``loss_fn(output, target) -> scalar`` (e.g. ``nn.CrossEntropyLoss()``).
        steps: optimisation steps (give ``steps`` or ``epochs``).
        epochs: passes over ``train_data`` (fractions allowed).
        lr: Adam learning rate for weights, biases and scales.
        calib_data: batches for the initial activation ranges (default: the inputs of the
            first 8 training batches).
        progress: show progress bars.

    Returns:
        The quantized model, of the same module types as ``qb.quantize``'s output, with
        ``qb_plan`` and ``qb_info`` (``qb_info.algorithm_log["qat"]`` holds the losses).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [(torch.randn(16, 4), torch.randint(0, 2, (16,))) for _ in range(4)]
        >>> q = qat(net, "w8a8", data, nn.CrossEntropyLoss(), steps=4, progress=False)
        >>> type(q[0]).__name__
        'QLinear'
    """
    if (steps is None) == (epochs is None) or (steps or epochs or 0) <= 0:
        raise ConfigError(f"qat: give exactly one of steps or epochs, > 0 (got {steps}, {epochs})")
    if calib_data is None:
        first = list(itertools.islice(iter(train_data), 8))
        if not first:
            raise CalibrationError("qat: train_data is empty: give at least one batch")
        calib_data = [_split(b)[0] for b in first]
    calib = check_calib_data(calib_data)
    if not quantizable_layers(model):
        raise ConfigError(
            f"qat: {type(model).__name__} has no quantizable layers (Linear, Conv1d/2d, "
            "Embedding): nothing to train"
        )
    the_plan = as_plan(plan)
    if the_plan.residual_activation is not None:
        raise UnsupportedError(
            "qat: residual_activation (quantized residual additions) is not trained by QAT; "
            "drop it from the Plan, or quantize with qb.quantize"
        )
    ptq = quantize(model, the_plan, calib, algorithm="rtn", progress=progress)
    fmodel = copy.deepcopy(model).eval()
    fold_batchnorm(fmodel)
    specs = ptq.qb_plan.resolve(quantizable_layers(fmodel))
    wrappers = {}
    for name, spec in specs.items():
        wrappers[name] = LSQLayer(fmodel.get_submodule(name), spec, ptq.get_submodule(name))
        replace_module(fmodel, name, wrappers[name])
    opt = torch.optim.Adam(fmodel.parameters(), lr=lr)
    n_steps = steps if steps is not None else _epoch_steps(train_data, epochs)
    losses = []
    fmodel.train()
    stream = _forever(train_data)
    for _ in tqdm(range(n_steps), desc="qat", disable=not progress, leave=False):
        inputs, target = _split(next(stream))
        loss = loss_fn(call_model(fmodel, inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    fmodel.eval()
    for name, w in wrappers.items():
        replace_module(fmodel, name, w.convert())
    k = max(1, len(losses) // 10)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    info = copy.copy(ptq.qb_info)
    info.algorithm_log = {
        "qat": {"steps": n_steps, "lr": lr, "loss_first": first, "loss_last": last}
    }
    log.info("qat: %d steps, mean loss %.4g (first 10%%) -> %.4g (last 10%%)", n_steps, first, last)
    fmodel.zero_grad(set_to_none=True)
    fmodel.qb_plan = ptq.qb_plan
    fmodel.qb_info = info
    return fmodel


def _epoch_steps(train_data: Iterable[Any], epochs: float | None) -> int:
    try:
        n = len(train_data)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError("qat: epochs needs train_data with a length; give steps") from None
    return max(1, round(n * (epochs or 0)))


def _forever(train_data: Iterable[Any]) -> Iterator[Any]:
    """Batches of ``train_data``, epoch after epoch (an empty epoch is an error)."""
    while True:
        empty = True
        for batch in train_data:
            empty = False
            yield batch
        if empty:
            raise CalibrationError("qat: train_data yielded no batch; give at least one")
