"""Run an exported QDQ model in ONNX Runtime, called like the torch model.

Session settings that matter for QDQ graphs (measured on ONNX Runtime 1.31, CPU):

* Graph optimizations ``ORT_ENABLE_ALL``: QDQ groups become integer kernels —
  ``Q → DQ → MatMul ← DQ(int8 W)`` runs as ``MatMulIntegerToFloat`` (static activations),
  ``DynamicQuantizeLinear → … MatMul`` as ``DynamicQuantizeMatMul``, and weight-only
  ``DQ(int8/int4 W) → MatMul`` as ``MatMulNBits``.
* ``MatMulAddFusion`` is disabled: it merges ``MatMul + bias Add`` into ``Gemm`` *before* the QDQ
  fusions run, which hides the quantized ``MatMul`` and falls back to float (3x slower at MiniLM's
  shapes). Pass the same ``disabled_optimizers`` when you build your own session.
* ``session.qdq_matmulnbits_accuracy_level``: ONNX Runtime's default (4) quantizes the activations
  of weight-only ``MatMulNBits`` layers to int8 per block, which the Plan did not ask for; we use 1
  (float32 activations), which matches quantbalance's simulation.
* Weight-only models: on this CPU (AMD EPYC, AVX-512 VNNI, no AMX) ``MatMulNBits`` with float32
  activations is not faster than a float ``MatMul``; ``qdq=False`` folds the weights to float at
  session start instead (same outputs, float speed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from quantbalance.deploy.select import TorchSession, fastest
from quantbalance.errors import ConfigError, UnsupportedError
from quantbalance.hardware import Hardware, detect

log = logging.getLogger(__name__)

BACKENDS = ("ort", "torch", "auto")
DISABLED_OPTIMIZERS = ("MatMulAddFusion",)
ONNX_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class OrtSession:
    """ONNX Runtime session called like the model: ``sess(x)``, ``sess(**batch)``, ``sess(batch)``.

    Args:
        model: ``.onnx`` path or serialized model bytes.
        intra_op_threads: threads per operator (None: ONNX Runtime's default, all cores).
        matmulnbits_accuracy: accuracy level of fused weight-only ``MatMulNBits`` (1 = float32
            activations, exact; 4 = int8 activations, faster on some CPUs, approximate).
        disabled_optimizers: ONNX Runtime optimizers to turn off (see the module docstring).
        providers: execution providers, in order of preference.
        qdq: fuse QDQ groups into integer kernels (default). False runs Q/DQ as float ops, so
            ONNX Runtime folds constant weight DQs into float initializers: same outputs, float
            MatMul speed and float memory at run time (the file stays small).
        spin: let idle ONNX Runtime threads spin-wait for the next call (its default, lowest
            latency alone). False when other engines share the cores, as in interleaved
            benchmarks: spinning threads would steal the next engine's time.
        inexact: what to do when this CPU's integer kernels would compute some layers
            inexactly (int8 weights beyond ±64 on x86 without VNNI, see
            ``quantbalance.deploy.ort_check``): ``fallback`` runs Q/DQ as float ops (exact,
            float speed; ``qdq`` becomes False) with a warning, ``error`` raises.
        hardware: the machine to check for (default: this one).

    Attributes:
        saturating: layers that the integer kernels would compute inexactly here (-> largest
            weight code); non-empty only when they were avoided by the fallback.
    """

    backend = "ort"

    def __init__(
        self,
        model: str | Path | bytes,
        *,
        intra_op_threads: int | None = None,
        matmulnbits_accuracy: int = 1,
        disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        qdq: bool = True,
        spin: bool = True,
        inexact: Literal["fallback", "error"] = "fallback",
        hardware: Hardware | None = None,
    ) -> None:
        self.saturating = _saturating(model, hardware or detect()) if qdq else {}
        if self.saturating:
            first, absmax = next(iter(self.saturating.items()))
            why = (
                f"{len(self.saturating)} integer layer(s) (first: {first!r}, weight codes up to "
                f"±{absmax}) would saturate in ONNX Runtime's int8 kernels on this CPU (no "
                "VNNI); export a model quantized with hardware='avx2' (7-bit weights)"
            )
            if inexact == "error":
                raise UnsupportedError(why)
            log.warning("%s; running Q/DQ as float ops instead (exact, float speed)", why)
            qdq = False
        self.qdq = qdq
        so = ort.SessionOptions()
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads is not None:
            so.intra_op_num_threads = int(intra_op_threads)
        so.inter_op_num_threads = 1
        so.add_session_config_entry(
            "session.qdq_matmulnbits_accuracy_level", str(int(matmulnbits_accuracy))
        )
        if not qdq:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        src = model if isinstance(model, bytes) else str(model)
        self.path = None if isinstance(model, bytes) else Path(model)
        self.session = ort.InferenceSession(
            src, so, providers=list(providers), disabled_optimizers=list(disabled_optimizers)
        )
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.input_names = list(self.inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        """Map call arguments to ONNX inputs (positional in input order, or by name).

        Args:
            *args: inputs in the model's order, or one dict batch.
            **kwargs: named inputs.

        Returns:
            Input name -> numpy array of the dtype the model expects.
        """
        if len(args) == 1 and isinstance(args[0], Mapping) and not kwargs:
            kwargs, args = dict(args[0]), ()
        if len(args) > len(self.input_names):
            raise ConfigError(
                f"{len(args)} positional inputs, the model takes {len(self.input_names)}: "
                f"{self.input_names}"
            )
        named = dict(zip(self.input_names, args, strict=False))
        for k, v in kwargs.items():
            if k in self.inputs:
                named[k] = v
            else:
                log.debug("input %r is not used by the exported graph; ignored", k)
        missing = [n for n in self.input_names if n not in named]
        if missing:
            raise ConfigError(f"missing inputs {missing}; the model takes {self.input_names}")
        return {k: _to_numpy(v, self.inputs[k]) for k, v in named.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model.

        Args:
            *args: positional inputs (torch or numpy) or one dict batch.
            **kwargs: named inputs.

        Returns:
            One output or a tuple of outputs; torch tensors if any input was a torch tensor,
            else numpy arrays.
        """
        as_torch = any(isinstance(v, torch.Tensor) for v in _values(args, kwargs))
        outs = self.session.run(self.output_names, self.feeds(*args, **kwargs))
        res = [torch.from_numpy(np.asarray(o)) if as_torch else o for o in outs]
        return res[0] if len(res) == 1 else tuple(res)


def session(
    path_or_qmodel: str | Path | nn.Module,
    backend: str = "ort",
    example_inputs: Any = None,
    min_cosine: float = 0.999,
    **options: Any,
) -> Any:
    """A callable running a deployed model.

    Args:
        path_or_qmodel: an exported ``.onnx`` file, or a quantized model (exported in memory;
            needs ``example_inputs``).
        backend: ``ort`` (ONNX Runtime QDQ), ``torch`` (``to_torch_engine``: oneDNN int8 /
            int4-pack kernels under torch.compile; needs a model) or ``auto``: for a model, both
            are built, checked against the simulation and timed on ``example_inputs``, and the
            faster of those that compute the simulated model is returned (its ``backend``,
            ``timings_ms`` and ``rejected`` attributes say which and why).
        example_inputs: one batch, for exporting a model.
        min_cosine: ``auto`` never picks an engine whose output on ``example_inputs`` is below
            this cosine similarity to the simulated model's.
        **options: passed to :class:`OrtSession` (``intra_op_threads``,
            ``matmulnbits_accuracy``, ``disabled_optimizers``, ``providers``, ``qdq``).

    Returns:
        The session; call it like the model.

    Example:
        >>> run = session("model.onnx", intra_op_threads=2)  # doctest: +SKIP
        >>> emb = run(task.example_inputs)  # doctest: +SKIP
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}; accepted: {', '.join(BACKENDS)}")
    if backend != "ort" and isinstance(path_or_qmodel, nn.Module):
        qmodel = path_or_qmodel
        if backend == "torch":
            return TorchSession(qmodel)
        if example_inputs is None:
            raise ConfigError("backend='auto' times the engines on example_inputs; pass one batch")
        builders = {
            "torch": lambda: TorchSession(qmodel),
            "ort": lambda: session(qmodel, "ort", example_inputs, **options),
        }
        with torch.inference_mode():
            want = _call(qmodel, example_inputs)
        _, best, timings, rejected = fastest(builders, example_inputs, reference=want,
                                             min_cosine=min_cosine)  # fmt: skip
        best.timings_ms, best.rejected = timings, rejected
        return best
    if backend == "torch":
        raise ConfigError("backend='torch' needs the quantized model, not an ONNX file")
    if isinstance(path_or_qmodel, nn.Module):
        if example_inputs is None:
            raise ConfigError("exporting a model for a session needs example_inputs (one batch)")
        # deferred: quantbalance.deploy.onnx_export imports onnxscript, slow to import
        from quantbalance.deploy.onnx_export import to_onnx

        blob = to_onnx(path_or_qmodel, example_inputs).SerializeToString()
        return OrtSession(blob, **options)
    path = Path(path_or_qmodel)
    if not path.is_file():
        raise ConfigError(f"{path}: no such ONNX file")
    return OrtSession(path, **options)


def _saturating(model: str | Path | bytes, hw: Hardware) -> dict[str, int]:
    """Layers that ONNX Runtime's int8 kernels would compute inexactly on ``hw``."""
    if not hw.ort_int8_saturates:
        return {}
    # deferred: onnx (also imported by ort_check) is slow to import
    import onnx

    from quantbalance.deploy.ort_check import saturating_layers

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    return saturating_layers(proto)


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(*batch) if isinstance(batch, tuple | list) else model(batch)


def _values(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    vals = list(args) + list(kwargs.values())
    if len(args) == 1 and isinstance(args[0], Mapping):
        vals = list(args[0].values())
    return vals


def _to_numpy(v: Any, onnx_type: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        v = v.float() if v.dtype == torch.bfloat16 else v
        v = v.numpy()
    arr = np.asarray(v)
    want = ONNX_NP_TYPES.get(onnx_type)
    return arr if want is None or arr.dtype == want else arr.astype(want)
