"""Quantize a Hugging Face causal LM larger than memory, one transformer block at a time.

``qb.quantize(hf_path, plan, calib_data, offload="disk", save_to=OUT)`` comes here:

1. the model is built on the ``meta`` device from its ``config.json`` (``accelerate``'s
   ``init_empty_weights``: shapes, no data; non-persistent buffers such as rotary frequencies are
   real);
2. the modules outside the block list (embeddings, final norm, LM head) are loaded from the
   safetensors shards; each block's weights are loaded just before the block is calibrated
   (:mod:`quantbalance.calibration.offload`), memory-mapped and copied out block by block;
3. the algorithm steps run through the same block-by-block pipeline as ``qb.quantize`` (GPTQ and
   AWQ in ``calibration.sequential``; round to nearest per block); when a block is done, its
   remaining layers are rounded to nearest, its quantized modules installed, its tensors written
   to the output (:class:`~quantbalance.deploy.sharded.ShardedWriter`) and its data dropped;
4. the modules outside the blocks are finished last and written with the index.

Peak memory: the outside modules + one block (float and quantized) + the calibration
activations (``len(calib_data)`` hidden states) + the step's statistics for one block,
independent of the number of blocks. ``offload="cpu"`` reads every weight into host memory once
instead (for a GPU ``device``: the device then holds only one block).

The result equals ``qb.quantize`` of the fully loaded model with the same Plan (same packed
codes): the blocks see the same inputs in the same order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.algorithms import ALGORITHMS, QuantContext, parse_algorithm
from quantbalance.calibration import check_calib_data
from quantbalance.calibration.batch import move_batch
from quantbalance.calibration.device import resolve_device, without_blocks
from quantbalance.calibration.offload import (
    InMemory,
    SafetensorsShards,
    TensorSource,
    drop,
    materialize,
    offload_hooks,
)
from quantbalance.calibration.sequential import find_blocks
from quantbalance.deploy.checkpoint import module_types
from quantbalance.deploy.sharded import ShardedWriter
from quantbalance.errors import CalibrationError, ConfigError, UnsupportedError
from quantbalance.plan import LayerSpec, Plan
from quantbalance.quantize_steps import QuantizationInfo, install_layer
from quantbalance.transform import quantizable_layers, unsupported_layers

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("disk", "cpu")
#: Step combinations that run with offloaded blocks (one block-by-block pass, then rounding).
OFFLOAD_STEPS = ((), ("gptq",), ("awq",))


def skeleton(
    folder: Path, dtype: torch.dtype | None = None, *, calibration: bool = True
) -> nn.Module:
    """A causal LM from ``folder/config.json`` with every parameter on ``meta``.

    Also the skeleton ``qb.load`` rebuilds a sharded checkpoint on when given the Hugging Face
    folder (the float weights are never read).

    Args:
        folder: a Hugging Face model folder.
        dtype: parameter dtype (default float32, whatever the checkpoint stores: what
            ``qb.quantize`` computes in when it loads the folder whole (``frontends.hf``), so
            that offloading quantizes the same model, code for code).
        calibration: turn the key/value cache off (calibration runs each block once per
            batch); False keeps the config's setting (a model loaded for generation).

    Returns:
        The model in eval mode (no weights).
    """
    # deferred: accelerate and transformers are the optional [offload] extra
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        raise ConfigError(f"{folder}: no config.json; give a local Hugging Face model folder")
    config = AutoConfig.from_pretrained(folder)
    if calibration and hasattr(config, "use_cache"):
        config.use_cache = False  # calibration keeps no key/value caches
    want = dtype or torch.float32
    with init_empty_weights():
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=want)
        except TypeError:  # transformers < 4.56 names it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=want)
    return model.eval()


def _check_plan(specs: dict[str, LayerSpec]) -> tuple[str, ...]:
    steps: list[str] = []
    for name, spec in specs.items():
        if spec.weight is None:
            raise UnsupportedError(f"layer {name!r}: activation-only specs are not supported")
        if spec.activation is not None and spec.act_mode == "static":
            raise UnsupportedError(
                f"layer {name!r}: static activation ranges need whole-model calibration passes, "
                "which offloading does not run; use weight-only or dynamic activation specs"
            )
        steps += [s for s in parse_algorithm(spec.algorithm) if s != "rtn" and s not in steps]
    if tuple(steps) not in OFFLOAD_STEPS:
        raise UnsupportedError(
            f"algorithm steps {'+'.join(steps)} cannot run with offloaded blocks; accepted: "
            "rtn, gptq, awq (one block-by-block pass)"
        )
    return tuple(steps)


def quantize_offloaded(
    path: str | Path,
    plan: Plan,
    calib_data: Any = None,
    *,
    save_to: str | Path,
    offload: str = "disk",
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Path:
    """Quantize the Hugging Face checkpoint at ``path`` block by block (see module docstring).

    Args:
        path: a local folder with ``config.json`` and safetensors weights.
        plan: the Plan (algorithms already applied to its specs).
        calib_data: calibration batches (needed by ``gptq`` and ``awq``).
        save_to: the output checkpoint folder (read back with ``qb.load(save_to, skeleton)``).
        offload: ``disk`` (blocks read from the shards when needed) or ``cpu`` (every weight
            read into host memory once).
        device: where blocks are calibrated (default ``cuda`` if available, else ``cpu``).
        progress: progress bars.

    Returns:
        The checkpoint folder written.
    """
    if offload not in OFFLOAD_MODES:
        raise ConfigError(f"offload={offload!r}: accepted {', '.join(OFFLOAD_MODES)}")
    dev = resolve_device(device)
    folder = Path(path)
    model = skeleton(folder)
    found = find_blocks(model)
    if found is None:
        raise UnsupportedError(f"{folder}: no transformer block list found in the model")
    prefix, mlist = found
    source: TensorSource = SafetensorsShards(folder)
    if offload == "cpu":
        source = InMemory(source)
    specs = plan.resolve(quantizable_layers(model))
    steps = _check_plan(specs)
    batches = check_calib_data(calib_data) if calib_data is not None else None
    if steps and not batches:
        raise CalibrationError(f"plan {plan.name!r} needs calibration data for {steps[0]}")
    batches = move_batch(batches, dev) if batches else batches
    with without_blocks(model, prefix):
        materialize(model, "", source, dev)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied:
        model.tie_weights()
    else:  # the untied LM head is not needed until the end: no memory for it meanwhile
        drop(model.get_output_embeddings())
    t0 = time.perf_counter()
    writer = ShardedWriter(save_to)
    try:
        info = _run(model, prefix, mlist, specs, steps, batches, source, dev, writer, progress)
        info.plan = plan
        out = writer.close(plan, info, modules=module_types(model))
    except BaseException:
        writer.abort()
        raise
    log.info("offloaded quantization of %d blocks in %.1f s", len(mlist), time.perf_counter() - t0)
    return out


def _run(
    model: nn.Module,
    prefix: str,
    mlist: nn.ModuleList,
    specs: dict[str, LayerSpec],
    steps: tuple[str, ...],
    batches: list[Any] | None,
    source: TensorSource,
    dev: torch.device,
    writer: ShardedWriter,
    progress: bool,
) -> Any:
    """Run the step with offload hooks, finish every block and the rest; return the info."""
    ctx = QuantContext(model, specs, batches, progress=progress)
    kept_float = [n for n in quantizable_layers(model) if n not in specs]
    installed: set[str] = set()
    finished: set[str] = set()

    def install(name: str) -> None:
        if name not in installed:
            install_layer(model, name, specs[name], ctx.qweights.pop(name))
            installed.add(name)

    def finish(names: dict[str, LayerSpec]) -> None:
        rest = {n: s for n, s in names.items() if n not in ctx.qweights and n not in installed}
        if rest:
            ALGORITHMS["rtn"](QuantContext(model, rest, None, qweights=ctx.qweights))
        for n in names:
            install(n)

    def finalize(bname: str, block: nn.Module) -> None:
        finish({n: s for n, s in specs.items() if n.startswith(bname + ".")})
        writer.add(bname, block)
        finished.add(bname)
        tied = getattr(model.config, "tie_word_embeddings", False)
        if bname == f"{prefix}.0" and not tied:  # block 0's inputs are computed: read it again
            drop(model.get_input_embeddings())  # at the end, when the outside is written

    ctx.install = install if steps == ("gptq",) else None
    ctx.blocks = offload_hooks(source, dev, finalize)
    for step in steps:
        ALGORITHMS[step](ctx)
    for i, block in enumerate(mlist):  # blocks no step ran (e.g. the plan skips them all)
        name = f"{prefix}.{i}"
        if name not in finished:
            ctx.blocks.enter(name, block)  # type: ignore[misc]
            ctx.blocks.exit(name, block)  # type: ignore[misc]
    with without_blocks(model, prefix):  # the embeddings and head dropped above
        materialize(model, "", source, dev)
    finish({n: s for n, s in specs.items() if n not in installed})
    info = QuantizationInfo(plan=Plan(name="offloaded"), algorithm_log=ctx.log)
    info.layers = {n: s.label for n, s in specs.items()}
    info.kept_float = kept_float
    with without_blocks(model, prefix):
        writer.add("", model)
        info.unsupported = unsupported_layers(model)
    for i in range(len(mlist)):  # the blocks' float modules, by name (all blocks alike)
        info.unsupported.update(
            {f"{prefix}.{i}.{k}": v for k, v in unsupported_layers(mlist[i]).items()}
        )
    return info
