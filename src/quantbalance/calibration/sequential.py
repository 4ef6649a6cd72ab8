"""Block-by-block calibration: run a transformer one block at a time.

Algorithms that need per-layer input statistics from a *partially quantized* model (GPTQ, AWQ)
run here instead of through full-model passes:

1. find the model's block list (data: :data:`BLOCK_PATHS`, else the largest ``nn.ModuleList``,
   else the whole model is one block);
2. capture the first block's inputs (positional and keyword arguments, e.g. attention masks and
   position embeddings) once per batch;
3. for each block: hook the algorithm's modules inside it and run the block over the stored
   inputs (``observe``), let the algorithm do its work (``finish``, which may return replacement
   weights, e.g. dequantized ones), then run the block again *with those weights* to produce the
   next block's inputs, then tell the algorithm the block is done (``done``: e.g. install the
   quantized modules, which frees the float weights);
4. modules outside every block (e.g. an LM head) are observed last, in one pass of the whole
   model in which every block replays the last block's outputs, so they too see the quantized
   chain without recomputing it.

Peak memory is the model plus one block's activations for the calibration set; with ``hooks``
(:mod:`quantbalance.calibration.offload`) each block's weights are loaded just before it runs and
dropped once it is done, so the peak is one block instead of the model. Free heap memory is
handed back to the operating system after each block (:mod:`quantbalance.calibration.memory`).

Where things live: this module is the runner (:func:`run_sequential`, :func:`swapped_weights`);
steps 1-2 and the chaining of block calls are in :mod:`quantbalance.calibration.blocks`, the
``observe`` callback that accumulates input statistics in
:mod:`quantbalance.calibration.input_stats`. Their public names are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from quantbalance.calibration.blocks import (
    BLOCK_PATHS,
    HIDDEN_KWARGS,
    RESET_KWARGS,
    BlockCall,
    as_call,
    capture_block_inputs,
    find_blocks,
    next_call,
)
from quantbalance.calibration.input_stats import (
    InputStats,
    InputStatsCollector,
    input_rows,
    supports_rows,
)
from quantbalance.calibration.memory import release_free_memory
from quantbalance.calibration.offload import BlockHooks
from quantbalance.calibration.pipeline import capture
from quantbalance.nn.layout import from_matrix, layout_of

__all__ = [  # the runner, and the names re-exported from blocks and input_stats
    "BLOCK_PATHS",
    "HIDDEN_KWARGS",
    "RESET_KWARGS",
    "BlockCall",
    "BlockHooks",
    "Done",
    "Finish",
    "InputStats",
    "InputStatsCollector",
    "Observe",
    "capture_block_inputs",
    "find_blocks",
    "input_rows",
    "run_sequential",
    "supports_rows",
    "swapped_weights",
]

log = logging.getLogger(__name__)

#: ``observe(name, module, input)``: called on every forward of an observed module.
Observe = Callable[[str, nn.Module, torch.Tensor], None]
#: ``finish(names) -> {name: weight}``: the algorithm's work once ``names`` were observed; the
#: returned weights replace the modules' weights while the block produces the next inputs.
Finish = Callable[[list[str]], Mapping[str, torch.Tensor]]
#: ``done(names)``: ``names`` were finished and are no longer run (their modules may be replaced).
Done = Callable[[list[str]], None]


@contextmanager
def swapped_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily run named modules with other weights (restored on exit).

    Args:
        model: the root module.
        weights: module name -> weight (any shape with the weight's number of elements).
    """
    saved = {}
    try:
        for name, w in weights.items():
            mod = model.get_submodule(name)
            param = mod.weight
            saved[name] = param.data
            param.data = from_matrix(layout_of(mod) or "rows", w, param.shape).to(param.dtype)
        yield
    finally:
        for name, data in saved.items():
            model.get_submodule(name).weight.data = data


def _run_block(
    block: nn.Module,
    calls: list[BlockCall],
    modules: Mapping[str, nn.Module],
    observe: Observe | None,
) -> list[Any]:
    handles = []
    if observe is not None:
        for name, mod in modules.items():

            def hook(m: nn.Module, inp: tuple[Any, ...], _out: Any, _n: str = name) -> None:
                observe(_n, m, inp[0])

            handles.append(mod.register_forward_hook(hook))
    try:
        return [block(*c.args, **c.kwargs) for c in calls]
    finally:
        for h in handles:
            h.remove()


class _Replay(nn.Module):
    """Stands in for a block during the outside pass: returns the recorded final outputs."""

    def __init__(self, block: nn.Module, outputs: list[Any], state: dict[str, int], last: bool):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a submodule: attributes only
        self._outputs = outputs
        self._state = state
        self._last = last

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        """Return the current batch's recorded output (the last replay advances the batch)."""
        out = self._outputs[self._state["i"]]
        if self._last:
            self._state["i"] += 1
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


def run_sequential(
    model: nn.Module,
    batches: Sequence[Any],
    modules: Mapping[str, nn.Module],
    observe: Observe | None = None,
    finish: Finish | None = None,
    desc: str = "sequential",
    progress: bool = True,
    done: Done | None = None,
    hooks: BlockHooks | None = None,
) -> list[Any]:
    """Observe and process ``modules`` block by block (see the module docstring).

    Args:
        model: the model (its weights may be changed in place by ``finish``).
        batches: validated calibration batches.
        modules: name -> module to observe (any module of the model). The mapping is copied
            and each entry dropped once its block is done, so a caller that keeps no other
            reference lets ``done`` free replaced modules as it goes.
        observe: ``observe(name, module, input)`` called on each forward of those modules.
        finish: ``finish(names) -> replacement weights`` called once per block (and once for the
            modules outside every block) after they were observed.
        desc: progress-bar label.
        progress: show a progress bar.
        done: ``done(names)`` called once a block's outputs were computed (and after ``finish``
            for the modules outside every block).
        hooks: called around each block (:class:`BlockHooks`: e.g. load its weights before it
            runs and drop them once it is done, for models larger than memory).

    Returns:
        The last block's outputs, one per batch, computed from the processed blocks (for a model
        without a block list: the model's outputs).
    """
    modules = dict(modules)
    found = find_blocks(model)
    captured = None if found is None else capture_block_inputs(model, found[1][0], batches)
    if found is not None and captured is None:
        log.info("%s is not called block by block; running the model as one block", found[0])
        found = None
    if found is None or captured is None:
        prefix, blocks = "", [model]
        calls = [as_call(b) for b in batches]
    else:
        (prefix, mlist), calls = found, captured
        blocks = list(mlist)
    names = [f"{prefix}.{i}" if found else "" for i in range(len(blocks))]
    inside = {b: [m for m in modules if not b or m.startswith(b + ".")] for b in names}
    outside = [m for m in modules if not any(m in v for v in inside.values())]
    outputs: list[Any] = []
    with torch.no_grad():
        steps = list(zip(names, blocks, strict=True))
        for bname, block in tqdm(steps, desc=desc, disable=not progress, leave=False):
            if hooks is not None and hooks.enter is not None:
                hooks.enter(bname, block)
            names = inside[bname]
            subs: Mapping[str, torch.Tensor] = {}
            if names:
                _run_block(block, calls, {n: modules[n] for n in names}, observe)
                subs = finish(names) if finish else {}
            with swapped_weights(model, subs):
                outputs = _run_block(block, calls, {}, None)
            del subs
            _done(modules, names, done)
            if hooks is not None and hooks.exit is not None:
                hooks.exit(bname, block)
            release_free_memory()  # keep the resident memory at one block's work
            if found:
                calls = [next_call(c, o) for c, o in zip(calls, outputs, strict=True)]
        if outside and found:
            rest = {n: modules[n] for n in outside}
            _observe_outside(model, mlist, outputs, rest, batches, observe)
            del rest
            if finish:
                finish(outside)
            _done(modules, outside, done)
    return outputs


def _done(modules: dict[str, nn.Module], names: list[str], done: Done | None) -> None:
    for n in names:
        modules.pop(n, None)
    if names and done is not None:
        done(names)


def _observe_outside(
    model: nn.Module,
    mlist: nn.ModuleList,
    outputs: list[Any],
    modules: dict[str, nn.Module],
    batches: Sequence[Any],
    observe: Observe | None,
) -> None:
    """One model pass with every block replaced by a replay of the processed chain's outputs."""
    state = {"i": 0}
    saved = list(mlist)
    for i, block in enumerate(saved):
        mlist[i] = _Replay(block, outputs, state, last=i == len(saved) - 1)
    try:
        if observe is not None:
            fn = observe
            capture(
                model,
                modules,
                batches,
                lambda n, m, inp, _o: fn(n, m, inp[0]),
                desc="outside blocks",
                progress=False,
            )
    finally:
        for i, block in enumerate(saved):
            mlist[i] = block
