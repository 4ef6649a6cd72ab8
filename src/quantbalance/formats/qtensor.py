"""QuantizedTensor: packed codes + parameters + the scheme that made them + the original shape.

Which tensors each kind stores and their exact byte cost: the table in ``formats.kinds``
(``FormatKind.nbytes`` computes it without quantizing).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

import quantbalance.formats.granularity as granularity
import quantbalance.formats.packing as packing
from quantbalance.errors import CheckpointError
from quantbalance.formats.granularity import (
    PerTensor,
    chunk_slices,
    expand_params,
    from_blocks,
    grid_shape,
    to_blocks,
)
from quantbalance.formats.scheme import Scheme
from quantbalance.formats.uniform import SCALE_DTYPES

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A quantized tensor: one object that can dequantize itself and report its exact size.

    Attributes:
        packed: uint8 codes, densely packed (see ``formats.packing``).
        scale: per-block scales in the parameter grid shape, stored in the scheme's scale dtype
            (None for codebooks, whose entries are absolute values).
        zero_point: per-block zero points (int8 or uint8) for asymmetric uniform schemes, else None.
        codebook: ``grid_shape + (2**bits,)`` lookup tables for ``codebook`` schemes, else None.
        scheme: the scheme that produced the codes.
        shape: the original shape.
        dtype: the original dtype (what ``dequantize`` returns).
    """

    packed: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    codebook: torch.Tensor | None
    scheme: Scheme
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor | None,
        zero_point: torch.Tensor | None,
        codebook: torch.Tensor | None,
        scheme: Scheme,
        shape: tuple[int, ...],
        dtype: torch.dtype,
    ) -> QuantizedTensor:
        """The quantized tensor of unsigned codes (packed here); the fields as the class's.

        Args:
            codes: unsigned codes (``q - qmin``, or table indices), ``prod(shape)`` of them.
            scale: see the class attributes.
            zero_point: see the class attributes.
            codebook: see the class attributes.
            scheme: the scheme that produced the codes (its ``bits`` pack them).
            shape: the original shape.
            dtype: the original dtype.

        Returns:
            The :class:`QuantizedTensor`.
        """
        packed = packing.pack(codes, scheme.bits)
        return cls(packed, scale, zero_point, codebook, scheme, shape, dtype)

    @property
    def numel(self) -> int:
        """Number of quantized elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Exact bytes of the codes and every stored parameter (see the module table)."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    @property
    def bits_per_weight(self) -> float:
        """Effective bits per element, parameters included."""
        return 8 * self.nbytes / max(self.numel, 1)

    def codes(self) -> torch.Tensor:
        """Unsigned codes (``q - qmin`` for uniform, table indices otherwise) in ``shape``.

        Returns:
            uint8 tensor of the original shape.
        """
        return packing.unpack(self.packed, self.scheme.bits, self.numel).reshape(self.shape)

    def dequantize(self) -> torch.Tensor:
        """Reconstruct the values (large tensors in pieces of whole blocks, to bound memory).

        Returns:
            Tensor of ``shape`` and ``dtype``.
        """
        u = self.codes()
        gran = self.scheme.granularity
        limit = granularity.CHUNK_ELEMENTS
        found = chunk_slices(self.shape, gran, limit)
        if found is None and not (isinstance(gran, PerTensor) and self.numel > limit):
            return self._dequantize_piece(u, slice(None)).to(self.dtype)
        out = torch.empty(self.shape, dtype=self.dtype, device=u.device)
        if found is None:  # per tensor: flat runs, one scale
            flat, dst = u.reshape(-1), out.view(-1)
            for i in range(0, self.numel, limit):
                dst[i : i + limit] = self._dequantize_piece(flat[i : i + limit], slice(None))
            return out
        axis, slices = found
        for r in slices:
            n = r.stop - r.start
            out.narrow(axis, r.start, n).copy_(
                self._dequantize_piece(u.narrow(axis, r.start, n), r)
            )
        return out

    def _dequantize_piece(self, u: torch.Tensor, rows: slice) -> torch.Tensor:
        """Float32 values of the codes ``u`` whose parameters are ``grid[rows]``."""
        s = self.scheme
        gran = s.granularity
        shape = tuple(u.shape)

        def part(p: torch.Tensor) -> torch.Tensor:
            return p[rows] if p.dim() and rows != slice(None) else p

        kind = s.format_kind
        if kind.learns_table:
            assert self.codebook is not None
            blocks, _ = to_blocks(u.long(), gran)
            table = part(self.codebook).float().reshape(blocks.shape[0], -1)
            return from_blocks(torch.gather(table, 1, blocks), shape, gran)
        assert self.scale is not None
        scale = expand_params(part(self.scale).float(), shape, gran)
        zp = None
        if self.zero_point is not None:
            zp = expand_params(part(self.zero_point).to(torch.int32), shape, gran)
        return kind.decode(u, scale, zp, s)

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"packed": self.packed}
        for name in ("scale", "zero_point", "codebook"):
            t = getattr(self, name)
            if t is not None:
                out[name] = t
        return out

    def parts(self) -> dict[str, torch.Tensor]:
        """The stored tensors (``packed`` and whichever of scale/zero_point/codebook exist).

        Returns:
            Name -> tensor (not copied).
        """
        return self._tensors()

    def metadata(self) -> dict[str, Any]:
        """What the tensors alone do not say: scheme, shape, dtype and format version.

        Returns:
            A JSON-ready dict (checkpoints store it as text in the safetensors header).
        """
        return {
            "format": FORMAT_VERSION,
            "scheme": self.scheme.model_dump(mode="json"),
            "shape": list(self.shape),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    @classmethod
    def from_parts(cls, parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> QuantizedTensor:
        """Rebuild from :meth:`parts` and :meth:`metadata`, checking every size against the scheme.

        Args:
            parts: name -> tensor.
            meta: the metadata dict.

        Returns:
            The QuantizedTensor.

        Raises:
            CheckpointError: unknown format version, dtype or a tensor of the wrong size.
        """
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            got = meta.get("format") if isinstance(meta, dict) else meta
            raise CheckpointError(
                f"quantized tensor format {got!r} is not supported; "
                f"this quantbalance reads format {FORMAT_VERSION}"
            )
        if "packed" not in parts:
            raise CheckpointError("quantized tensor has no 'packed' codes")
        try:
            scheme = Scheme(**meta["scheme"])
            shape = tuple(int(v) for v in meta["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"quantized tensor metadata is unreadable ({e})") from None
        dtype = getattr(torch, str(meta.get("dtype")), None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"unknown dtype {meta.get('dtype')!r} in quantized tensor meta")
        qt = cls(
            packed=parts["packed"],
            scale=parts.get("scale"),
            zero_point=parts.get("zero_point"),
            codebook=parts.get("codebook"),
            scheme=scheme,
            shape=shape,
            dtype=dtype,
        )
        qt.validate()
        return qt

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors: :meth:`parts` plus :meth:`metadata` as a ``meta`` uint8 JSON blob.

        Returns:
            Name -> contiguous tensor (one self-contained dict; checkpoints use
            :meth:`parts` and :meth:`metadata` instead).
        """
        blob = json.dumps(self.metadata(), sort_keys=True).encode()
        out = {k: v.contiguous() for k, v in self._tensors().items()}
        out["meta"] = torch.tensor(list(blob), dtype=torch.uint8)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> QuantizedTensor:
        """Rebuild from :meth:`to_dict` output, checking every size against the scheme.

        Args:
            d: name -> tensor, as written by ``to_dict``.

        Returns:
            The QuantizedTensor.
        """
        try:
            meta = json.loads(bytes(d["meta"].tolist()).decode())
        except (KeyError, ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"quantized tensor has no readable 'meta' entry ({e})") from None
        return cls.from_parts({k: v for k, v in d.items() if k != "meta"}, meta)

    def validate(self) -> None:
        """Check that every stored tensor has the size the scheme and shape imply.

        Raises:
            CheckpointError: naming the tensor, its size and the expected size.
        """
        grid = grid_shape(self.shape, self.scheme.granularity)
        want_packed = packing.packed_nbytes(self.numel, self.scheme.bits)
        if self.packed.dtype != torch.uint8 or self.packed.numel() != want_packed:
            raise CheckpointError(
                f"packed codes: {self.packed.numel()} {self.packed.dtype} values, expected "
                f"{want_packed} uint8 for {self.numel} elements of {self.scheme.bits} bits"
            )
        kind = self.scheme.format_kind
        if kind.learns_table:
            want = (*grid, self.scheme.n_levels)
            if self.codebook is None or tuple(self.codebook.shape) != want:
                got = None if self.codebook is None else tuple(self.codebook.shape)
                raise CheckpointError(f"codebook shape {got}, expected {want}")
            return
        if self.scale is None or tuple(self.scale.shape) != grid:
            got = None if self.scale is None else tuple(self.scale.shape)
            raise CheckpointError(f"scale shape {got}, expected {grid}")
        if self.scale.dtype != SCALE_DTYPES[self.scheme.scale_dtype]:
            raise CheckpointError(
                f"scale dtype {self.scale.dtype}, expected {self.scheme.scale_dtype}"
            )
        if kind.has_zero_point(self.scheme) and (
            self.zero_point is None or tuple(self.zero_point.shape) != grid
        ):
            raise CheckpointError(f"zero_point missing or not of shape {grid}")

    def __repr__(self) -> str:
        return (
            f"QuantizedTensor({self.scheme.label}, shape={self.shape}, nbytes={self.nbytes}, "
            f"bpw={self.bits_per_weight:.3f})"
        )
