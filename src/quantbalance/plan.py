"""The Plan: which layer gets which precision. Plain, validated data.

A Plan is an ordered map from layer names to a :class:`LayerSpec` (or ``None`` = keep float).
Keys are exact module names or ``re:`` regular expressions (full match). Resolution for each
quantizable module: an exact key wins, else the first matching ``re:`` key in order, and
``skip`` patterns override both. ``re:`` keys only match modules whose type is in
``layer_types``; exact keys may name any supported type (e.g. an ``Embedding``).

Plans save to and load from JSON or YAML, and print as a per-layer table.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from quantbalance.args import checked
from quantbalance.errors import ConfigError, PlanError
from quantbalance.formats import PerChannel, PerGroup, PerTensor, PerToken, Scheme
from quantbalance.formats.config import FrozenConfig
from quantbalance.hardware import Int8Target
from quantbalance.io import atomic_write_text
from quantbalance.lowering import lower_spec
from quantbalance.options import check_algorithm, checked_args

#: What ``re:`` keys match by default: the torch class a layer behaves as (subclasses included,
#: transformers' ``Conv1D`` as ``Linear``); embeddings only when named or listed.
WEIGHT_LAYER_TYPES = (
    "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
)  # fmt: skip


class LayerSpec(FrozenConfig):
    """How one layer is quantized.

    Args:
        weight: weight scheme, or None to keep the weight in float.
        activation: scheme of the layer's input activation, or None (weight-only).
        act_mode: ``static`` (ranges calibrated once) or ``dynamic`` (ranges per call).
        act_observer: observer for static activation ranges (``minmax``, ``ema``, ``percentile``,
            ``mse``, ``entropy``).
        weight_observer: observer for weight ranges (``minmax`` or ``mse``).
        algorithm: the weight algorithm's steps, joined by ``+`` (``rtn`` = round to nearest,
            ``smoothquant+gptq``); each must be a known step (``options.algorithm_names()``).
        algorithm_args: algorithm name -> its options for this layer, e.g.
            ``{"gptq": {"damp": 0.02, "act_order": False}, "awq": {"clip": False}}``. They
            override the context-local options (``gptq_options``/``awq_options``) field by
            field; each entry is validated by the algorithm's options class
            (``quantbalance.options``: ``GPTQOptions``, ``AWQOptions``, ...). Entries for algorithms
            the layer does not run are kept but unused (``quantize(algorithm=...)`` may pick
            them).
    """

    weight: Scheme | None = None
    activation: Scheme | None = None
    act_mode: Literal["static", "dynamic"] = "static"
    act_observer: Literal["minmax", "ema", "percentile", "mse", "entropy"] = "minmax"
    weight_observer: Literal["minmax", "mse"] = "minmax"
    algorithm: str = "rtn"
    algorithm_args: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("algorithm")
    @classmethod
    def _check_algorithm(cls, v: str) -> str:
        check_algorithm(v)
        return v

    @field_validator("algorithm_args")
    @classmethod
    def _check_algorithm_args(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return checked_args(v)

    def __hash__(self) -> int:
        return hash(self.model_dump_json())

    @model_validator(mode="after")
    def _check(self) -> LayerSpec:
        if self.weight is None and self.activation is None:
            raise ValueError("a LayerSpec needs a weight or an activation scheme (or use None)")
        if self.activation is not None and not self.activation.format_kind.activations:
            raise ValueError(
                f"activation kind {self.activation.kind!r}: activations support kind='uniform'"
            )
        if self.activation is not None and not isinstance(
            self.activation.granularity, PerTensor | PerToken
        ):
            raise ValueError("activation granularity must be PerTensor() or PerToken()")
        if (
            self.activation is not None
            and self.act_mode == "static"
            and isinstance(self.activation.granularity, PerToken)
        ):
            raise ValueError("PerToken() activation ranges exist only with act_mode='dynamic'")
        return self

    @property
    def label(self) -> str:
        """Short description, e.g. ``W int8-per-channel / A int8-per-tensor-asym (static)``."""
        w = self.weight.label if self.weight else "float"
        if self.activation is None:
            return f"W {w}"
        return f"W {w} / A {self.activation.label} ({self.act_mode})"


class Plan(FrozenConfig):
    """Ordered map of layer names / ``re:`` patterns to LayerSpecs, plus skip rules.

    Args:
        layers: name or ``re:`` pattern -> LayerSpec, or None to keep matching layers float.
        skip: names or ``re:`` patterns never quantized.
        layer_types: module types that ``re:`` keys may match.
        name: optional label (preset name or search result).
        hardware: the int8 kernels the model must be exact on. ``avx2`` (x86 without VNNI:
            int16-saturating u8 × s8 pairs): every layer with 8-bit activations and signed
            symmetric weights of more than 7 bits gets 7-bit weights (codes within ±64), which
            every x86 int8 kernel computes exactly (see ``quantbalance.lowering``). ``vnni`` (VNNI,
            AMX, Arm): specs as written. None: not decided (``qb.quantize`` fills it in).
        residual_activation: a static per-tensor activation scheme for every addition of two
            tensors in the model's own forwards (residual ``Add``): inputs and sum are
            quantized, calibrated with ``minmax`` (``transform.quantize_residual_adds``; a
            model torch.fx cannot trace is refused). None (default): additions stay float.
            ONNX Runtime then runs the ``Add`` as ``QLinearAdd`` and the convolutions feeding
            it as ``QLinearConv``.
    """

    layers: dict[str, LayerSpec | None] = Field(default_factory=dict)
    skip: list[str] = Field(default_factory=list)
    layer_types: list[str] = Field(default_factory=lambda: list(WEIGHT_LAYER_TYPES))
    name: str = "custom"
    hardware: Int8Target | None = None
    residual_activation: Scheme | None = None

    @field_validator("residual_activation")
    @classmethod
    def _check_residual(cls, v: Scheme | None) -> Scheme | None:
        if v is not None and not (
            v.format_kind.activations and isinstance(v.granularity, PerTensor)
        ):
            raise ValueError("residual_activation must be a uniform PerTensor() scheme")
        return v

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("residual_activation", 0) is None:  # Plans without it keep their bytes
            del data["residual_activation"]
        return data

    @field_validator("layers", "skip")
    @classmethod
    def _check_patterns(cls, v: Any) -> Any:
        keys = v.keys() if isinstance(v, dict) else v
        for k in keys:
            if k.startswith("re:"):
                try:
                    re.compile(k[3:])
                except re.error as e:
                    raise ValueError(f"bad regular expression {k!r}: {e}") from None
        return v

    def spec_for(self, name: str, type_name: str) -> tuple[LayerSpec | None, str | None]:
        """The spec a module gets and the key that chose it.

        Args:
            name: module name in the model.
            type_name: module class name (e.g. ``Linear``).

        Returns:
            ``(spec or None, matching key or None)``; the spec is lowered for ``hardware``.
        """
        if any(_match(p, name) for p in self.skip):
            return None, "skip"
        if name in self.layers:
            return lower_spec(self.layers[name], type_name, self.hardware), name
        if type_name in self.layer_types:
            for key, spec in self.layers.items():
                if key.startswith("re:") and _match(key, name):
                    return lower_spec(spec, type_name, self.hardware), key
        return None, None

    def resolve(self, candidates: dict[str, str]) -> dict[str, LayerSpec]:
        """Assign specs to modules, checking that every exact key names a module.

        Args:
            candidates: quantizable module name -> class name, in model order.

        Returns:
            Module name -> LayerSpec for the modules to quantize, in model order.
        """
        for key in list(self.layers) + self.skip:
            if key.startswith("re:") or key in candidates:
                continue
            close = difflib.get_close_matches(key, list(candidates), n=5, cutoff=0.5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise PlanError(
                f"plan names layer {key!r}, which is not a quantizable layer of the model "
                f"({len(candidates)} quantizable layers){hint}"
            )
        out = {}
        for name, type_name in candidates.items():
            spec, _ = self.spec_for(name, type_name)
            if spec is not None:
                out[name] = spec
        return out

    def to_json(self) -> str:
        """JSON text of the Plan."""
        return json.dumps(self.model_dump(mode="json"), indent=1)

    def save(self, path: str | Path) -> Path:
        """Write the Plan as JSON or YAML (by suffix), atomically.

        Args:
            path: ``.json``, ``.yaml`` or ``.yml`` file.

        Returns:
            The path written.
        """
        path = Path(path)
        data = self.model_dump(mode="json")
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(data, sort_keys=False)
        elif path.suffix == ".json":
            text = json.dumps(data, indent=1)
        else:
            raise ConfigError(f"plan file {path}: suffix must be .json, .yaml or .yml")
        atomic_write_text(path, text)
        return path

    @classmethod
    @checked
    def load(cls, path: str | Path) -> Plan:
        """Read a Plan from JSON or YAML.

        Args:
            path: the file.

        Returns:
            The validated Plan.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read plan file {path} ({type(e).__name__}: {e}); give a .json or "
                ".yaml file written by Plan.save, or a preset name"
            ) from None
        try:
            data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigError(f"plan file {path} is not valid JSON/YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"plan file {path}: expected a mapping, got {type(data).__name__}")
        return cls.model_validate(data)

    def table_rows(self, resolved: dict[str, LayerSpec] | None = None) -> list[tuple[str, str]]:
        """Rows ``(layer or pattern, spec label)`` for printing.

        Args:
            resolved: optional resolution against a model (one row per layer).

        Returns:
            List of ``(name, description)``.
        """
        adds = self.residual_activation
        extra = [("(residual additions)", f"A {adds.label} (static)")] if adds else []
        if resolved is not None:
            return [(n, s.label) for n, s in resolved.items()] + extra
        rows = [(k, v.label if v else "float (kept)") for k, v in self.layers.items()]
        return rows + [(p, "skip") for p in self.skip] + extra


def _match(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return pattern == name


def _int8_pc() -> Scheme:
    return Scheme(8, granularity=PerChannel(axis=0))


def _act8_static() -> Scheme:
    return Scheme(8, symmetric=False, granularity=PerTensor())


def _act8_dynamic() -> Scheme:
    return Scheme(8, symmetric=False, granularity=PerToken())


def _uniform_plan(name: str, spec: LayerSpec) -> Plan:
    # Presets cover embedding tables too (weight-only: their inputs are indices); in a small
    # transformer such as MiniLM the word embeddings are half of all parameters.
    # A language model's output projection (lm_head) is its most sensitive layer and is kept
    # float, as in the GPTQ/AWQ reference setups.
    return Plan(
        name=name,
        layers={"re:.*": spec},
        skip=["re:(.*\\.)?lm_head"],
        layer_types=[*WEIGHT_LAYER_TYPES, "Embedding"],
    )


_G128 = PerGroup(size=128)

#: The uniform presets, listed once: name -> (the spec every layer gets, description).
PRESET_TABLE: dict[str, tuple[LayerSpec, str]] = {
    "int8-weight": (
        LayerSpec(weight=_int8_pc()),
        "int8 per-channel symmetric weights, float activations",
    ),
    "w8a8": (
        LayerSpec(weight=_int8_pc(), activation=_act8_static()),
        "int8 per-channel weights, int8 per-tensor static activations",
    ),
    "w8a8-dynamic": (
        LayerSpec(weight=_int8_pc(), activation=_act8_dynamic(), act_mode="dynamic"),
        "int8 per-channel weights, int8 per-token dynamic activations",
    ),
    "w4-g128": (
        LayerSpec(weight=Scheme(4, symmetric=False, granularity=_G128)),
        "int4 asymmetric weights in groups of 128, float activations",
    ),
    "w4a8": (
        LayerSpec(weight=Scheme(4), activation=_act8_static()),
        "int4 per-channel weights, int8 per-tensor static activations (CNNs)",
    ),
    "nf4": (
        LayerSpec(weight=Scheme(4, kind="nf4", granularity=PerGroup(size=64))),
        "NF4 weights in groups of 64, float activations",
    ),
    "w3-g128": (
        LayerSpec(weight=Scheme(3, symmetric=False, granularity=_G128)),
        "int3 asymmetric weights in groups of 128, float activations",
    ),
}
#: Preset name -> description.
PRESETS: dict[str, str] = {name: text for name, (_, text) in PRESET_TABLE.items()}
#: Preset name -> the spec every layer gets.
PRESET_SPECS: dict[str, LayerSpec] = {name: spec for name, (spec, _) in PRESET_TABLE.items()}
#: Presets with Plan-wide options, not placed on the search's axes: name -> (the uniform
#: preset they extend, the Plan fields they set, description).
OPTION_PRESETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "w8a8-residual": (
        "w8a8",
        {"residual_activation": _act8_static()},
        "w8a8, and every residual addition's inputs and sum int8 per-tensor static",
    ),
}
#: Every preset name ``preset()`` accepts -> description.
ALL_PRESETS: dict[str, str] = {**PRESETS, **{k: v[2] for k, v in OPTION_PRESETS.items()}}


@checked
def preset(name: str) -> Plan:
    """A named uniform Plan.

    Args:
        name: one of ``ALL_PRESETS`` (``PRESETS`` and the option presets).

    Returns:
        The Plan (a single ``re:.*`` rule over Linear, Conv and Embedding layers; embeddings
        get the weight scheme only).
    """
    if name in OPTION_PRESETS:
        base, fields, _ = OPTION_PRESETS[name]
        return _uniform_plan(name, PRESET_SPECS[base]).model_copy(update=fields)
    if name not in PRESET_SPECS:
        raise ConfigError(f"unknown preset {name!r}; accepted: {', '.join(ALL_PRESETS)}")
    return _uniform_plan(name, PRESET_SPECS[name])
