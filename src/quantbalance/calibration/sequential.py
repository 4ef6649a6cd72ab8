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

Peak memory is the model plus one block's activations for the calibration set (the blocks are
not offloaded here; ``accelerate`` is the planned way to do that); free heap memory is handed
back to the operating system after each block (:mod:`quantbalance.calibration.memory`).

Control flow note: capturing the first block's inputs stops the forward pass by raising the
private :class:`_EarlyStopError` from a pre-hook (the rest of the model need not run); it is caught
in :func:`capture_block_inputs` and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from quantbalance.calibration.batch import call_model
from quantbalance.calibration.memory import release_free_memory
from quantbalance.calibration.pipeline import capture, describe_batch
from quantbalance.errors import CalibrationError, QuantBalanceError, UnsupportedError

log = logging.getLogger(__name__)

#: Where transformer families keep their block list (matched as the full name or a suffix).
BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma
    "encoder.layer",  # BERT, RoBERTa
    "transformer.h",  # GPT-2, Falcon
    "model.decoder.layers",  # OPT
    "gpt_neox.layers",  # Pythia
)
#: Keyword names under which a block may receive its hidden state.
HIDDEN_KWARGS: tuple[str, ...] = ("hidden_states", "hidden_state", "x")
#: Keyword arguments reset when a block is replayed (no KV cache across calibration runs).
RESET_KWARGS: dict[str, Any] = {"past_key_values": None, "past_key_value": None, "use_cache": False}

#: ``observe(name, module, input)``: called on every forward of an observed module.
Observe = Callable[[str, nn.Module, torch.Tensor], None]
#: ``finish(names) -> {name: weight}``: the algorithm's work once ``names`` were observed; the
#: returned weights replace the modules' weights while the block produces the next inputs.
Finish = Callable[[list[str]], Mapping[str, torch.Tensor]]
#: ``done(names)``: ``names`` were finished and are no longer run (their modules may be replaced).
Done = Callable[[list[str]], None]


@dataclass(frozen=True)
class BlockCall:
    """The arguments of one call of a block (one calibration batch)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _EarlyStopError(Exception):
    """Raised by the first block's pre-hook to end a capture pass early (see module notes)."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's list of transformer blocks.

    Args:
        model: any module.

    Returns:
        ``(name, ModuleList)`` for the first :data:`BLOCK_PATHS` entry found (as a full name or a
        suffix), else the non-empty ``ModuleList`` with the most parameters, else None.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> find_blocks(net) is None
        True
    """
    lists = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) and any(True for _ in m.parameters())
    }
    for path in BLOCK_PATHS:
        for name, mod in lists.items():
            if name == path or name.endswith("." + path):
                return name, mod
    if not lists:
        return None
    name = max(lists, key=lambda n: sum(p.numel() for p in lists[n].parameters()))
    return name, lists[name]


def _describe_error(i: int, batch: Any, e: Exception) -> CalibrationError:
    return CalibrationError(
        f"calibration batch {i} ({describe_batch(batch)}) does not fit the model: "
        f"{type(e).__name__}: {e}"
    )


def capture_block_inputs(
    model: nn.Module, block: nn.Module, batches: Sequence[Any]
) -> list[BlockCall] | None:
    """Record the arguments ``block`` receives for each batch, without running the rest.

    Args:
        model: the full model.
        block: its first block.
        batches: calibration batches (``call_model`` convention).

    Returns:
        One :class:`BlockCall` per batch (KV-cache arguments reset, see :data:`RESET_KWARGS`),
        or None if the model never calls ``block`` as a module.
    """
    calls: list[BlockCall] = []

    def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = {k: RESET_KWARGS.get(k, v) for k, v in kwargs.items()}
        calls.append(BlockCall(tuple(args), kw))
        raise _EarlyStopError

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                try:
                    call_model(model, batch)
                except _EarlyStopError:
                    continue
                except (RuntimeError, TypeError, ValueError, IndexError) as e:
                    if isinstance(e, QuantBalanceError):
                        raise
                    raise _describe_error(i, batch, e) from e
                return None
    finally:
        handle.remove()
    return calls


def _as_call(batch: Any) -> BlockCall:
    if isinstance(batch, Mapping):
        return BlockCall((), dict(batch))
    if isinstance(batch, tuple | list):
        return BlockCall(tuple(batch), {})
    return BlockCall((batch,), {})


def _next_call(call: BlockCall, output: Any) -> BlockCall:
    """The next block's call: this call with the hidden state replaced by ``output``."""
    hidden = output if isinstance(output, torch.Tensor) else output[0]
    if call.args:
        return replace(call, args=(hidden, *call.args[1:]))
    for key in HIDDEN_KWARGS:
        if key in call.kwargs:
            return replace(call, kwargs={**call.kwargs, key: hidden})
    raise UnsupportedError(
        f"cannot find the hidden state among the block's arguments (keywords: "
        f"{sorted(call.kwargs)}); expected it first or as one of {HIDDEN_KWARGS}"
    )


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
            param = model.get_submodule(name).weight
            saved[name] = param.data
            param.data = w.reshape(param.shape).to(param.dtype)
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
        calls = [_as_call(b) for b in batches]
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
            names = inside[bname]
            subs: Mapping[str, torch.Tensor] = {}
            if names:
                _run_block(block, calls, {n: modules[n] for n in names}, observe)
                subs = finish(names) if finish else {}
            with swapped_weights(model, subs):
                outputs = _run_block(block, calls, {}, None)
            del subs
            _done(modules, names, done)
            release_free_memory()  # keep the resident memory at one block's work
            if found:
                calls = [_next_call(c, o) for c, o in zip(calls, outputs, strict=True)]
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


# ------------------------------------------------------------------------- input statistics


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The rows a layer multiplies with its weight matrix (``nn.weight_matrix`` layout).

    Linear: every token; Conv1d/Conv2d (``groups=1``, numeric zero padding): every unfolded patch.

    Args:
        module: the layer.
        x: its input.

    Returns:
        ``(N, in_features)`` float32 rows, or None for a layer without such a view.
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).float()
    if not supports_rows(module):
        return None
    assert isinstance(module, nn.Conv1d | nn.Conv2d)
    k, d, p, s = module.kernel_size, module.dilation, module.padding, module.stride
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        k, d, p, s = (1, k[0]), (1, d[0]), (0, p[0]), (1, s[0])  # type: ignore[index]
    cols = nn.functional.unfold(x.float(), k, d, p, s)  # (B, C·kh·kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def supports_rows(module: nn.Module) -> bool:
    """Whether :func:`input_rows` has a row view of ``module``'s input.

    Args:
        module: any module.

    Returns:
        True for Linear and for ungrouped, zero-padded Conv1d/Conv2d with numeric padding.
    """
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv1d | nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


class InputStats:
    """Running sums of a layer's input rows: ``Σ x xᵀ`` (float64) and optionally ``Σ |x|``."""

    def __init__(self, n_features: int, absmean: bool = False) -> None:
        self.count = 0
        self.gram = torch.zeros(n_features, n_features, dtype=torch.float64)
        self.abs_sum = torch.zeros(n_features, dtype=torch.float64) if absmean else None

    def hessian(self) -> torch.Tensor:
        """GPTQ's layer Hessian ``H = 2/n Σ x xᵀ`` (float32)."""
        return (2.0 * self.gram / max(self.count, 1)).float()

    def second_moment(self) -> torch.Tensor:
        """``E[x xᵀ]`` (float32): ``‖X Δᵀ‖²/n = tr(Δ E[x xᵀ] Δᵀ)`` for any weight error Δ."""
        return (self.gram / max(self.count, 1)).float()

    def abs_mean(self) -> torch.Tensor:
        """Per-channel ``E|x|`` (float32); needs ``absmean=True``."""
        assert self.abs_sum is not None, "InputStats(absmean=True) is needed for abs_mean()"
        return (self.abs_sum / max(self.count, 1)).float()


class InputStatsCollector:
    """An ``observe`` callback that accumulates :class:`InputStats` per layer.

    Layers fed the same input tensor in a row (e.g. q/k/v projections) share one ``xᵀx`` product.

    Args:
        absmean: also accumulate ``Σ |x|`` per channel (AWQ, SmoothQuant).
    """

    def __init__(self, absmean: bool = False) -> None:
        self.absmean = absmean
        self.stats: dict[str, InputStats] = {}
        self._last: tuple[Any, ...] | None = None

    def __call__(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        key = (
            type(module),
            getattr(module, "kernel_size", None),
            getattr(module, "stride", None),
            getattr(module, "padding", None),
            getattr(module, "dilation", None),
        )
        if self._last is not None and self._last[0] is x and self._last[1] == key:
            _, _, n, gram, abs_sum = self._last
        else:
            rows = input_rows(module, x)
            if rows is None:
                raise UnsupportedError(f"layer {name!r} ({type(module).__name__}) has no row view")
            n, gram = rows.shape[0], (rows.T @ rows).double()
            abs_sum = rows.abs().sum(0).double() if self.absmean else None
            self._last = (x, key, n, gram, abs_sum)
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = InputStats(gram.shape[0], self.absmean)
        st.count += n
        st.gram += gram
        if st.abs_sum is not None:
            st.abs_sum += abs_sum

    def pop(self, name: str) -> InputStats:
        """Remove and return a layer's statistics (frees memory once the layer is processed).

        Args:
            name: the layer.

        Returns:
            Its statistics.
        """
        self._last = None
        if name not in self.stats:
            raise CalibrationError(f"layer {name!r} never ran on the calibration data")
        return self.stats.pop(name)
