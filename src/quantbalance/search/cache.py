"""On-disk cache of search measurements: one small JSON file per entry, written atomically.

An entry is addressed by a *key*: a dict of everything the measurement depends on (model hash,
layer, spec JSON with its algorithm and options, calibration-data hash, the evaluation: its
function's fingerprint and the float model's reference metrics of this run, ...), to which the
cache adds its format version and the quantbalance and torch versions. The file name is the
SHA-256 of the canonical JSON of the key, and the file stores the key next to the value, so a
hash collision or a stale file is detected. An unreadable or malformed entry is ignored with a
warning and the value is recomputed.

Each entry is its own file, written to a temporary file and renamed into place: a search
killed half way leaves only complete entries (the next run with the same arguments reuses them
and resumes), and several processes may share one folder (two writers of one entry write the
same value; the last rename wins).

Example:
    >>> import tempfile
    >>> c = Cache(tempfile.mkdtemp())
    >>> c.get("demo", {"x": 1}) is None
    True
    >>> _ = c.put("demo", {"x": 1}, {"y": 2.0})
    >>> c.get("demo", {"x": 1})
    {'y': 2.0}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quantbalance.errors import ConfigError
from quantbalance.io import atomic_write_text
from quantbalance.version import __version__

log = logging.getLogger(__name__)

CACHE_VERSION = 2


def _versions() -> dict[str, str]:

    return {"quantbalance": __version__, "torch": torch.__version__}


def default_cache_dir() -> Path:
    """``$QB_CACHE_DIR``, else ``~/.cache/quantbalance/search``.

    Returns:
        The folder (not created).
    """
    env = os.environ.get("QB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "quantbalance" / "search"


def digest(obj: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``obj``.

    Args:
        obj: JSON-serialisable data (non-serialisable leaves are turned into ``str``).

    Returns:
        64 hex characters.
    """
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _update_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def model_hash(model: nn.Module) -> str:
    """Hash of every tensor of ``model.state_dict()`` (names, dtypes, shapes and bytes).

    Args:
        model: the model.

    Returns:
        A hex digest (changes when any weight or buffer changes).
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            _update_tensor(h, t)
    return h.hexdigest()


def data_hash(batches: Iterable[Any] | None) -> str:
    """Hash of a list of batches (Tensors, tuples/lists or mappings of Tensors).

    Args:
        batches: the batches, or None.

    Returns:
        A hex digest (``"none"`` for None).
    """
    if batches is None:
        return "none"
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            _update_tensor(h, x)
        elif isinstance(x, Mapping):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                visit(x[k])
        elif isinstance(x, list | tuple):
            h.update(f"seq{len(x)}".encode())
            for v in x:
                visit(v)
        else:
            h.update(repr(x).encode())

    visit(list(batches))
    return h.hexdigest()


def fn_identity(fn: Callable[..., Any], extra: Any = None) -> str:
    """Identity of an evaluation function: module, qualified name, and ``extra`` facts.

    Two closures with the same name but different data must differ in ``extra`` (tasks pass
    their name and ``info``); a user can pass ``eval_id`` to ``search`` for the same purpose.

    Args:
        fn: the function.
        extra: any JSON-able facts that distinguish it.

    Returns:
        A short text.
    """
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    return name if extra is None else f"{name}|{digest(extra)[:16]}"


def machine_id() -> dict[str, Any]:
    """Facts that make latency measurements comparable: CPU, threads, torch version.

    Returns:
        A small dict.
    """
    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.node(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _valid(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isnan(value)
    if isinstance(value, dict):
        return all(_valid(v) for v in value.values())
    if isinstance(value, list):
        return all(_valid(v) for v in value)
    return True


class Cache:
    """A folder of JSON entries grouped by kind (``sens``, ``eval``, ``latency``, ...).

    Args:
        root: the folder, or None for a disabled cache (every ``get`` misses).
    """

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None
        if self.root is not None and self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"cache_dir {str(self.root)!r} is a file; give a folder (or None)")
        self.hits = 0
        self.misses = 0
        self.by_kind: dict[str, list[int]] = {}
        self.read_only = False

    def _count(self, kind: str, hit: bool) -> None:
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        self.by_kind.setdefault(kind, [0, 0])[0 if hit else 1] += 1

    def path(self, kind: str, key: Mapping[str, Any]) -> Path | None:
        """File of an entry (None when the cache is disabled).

        Args:
            kind: entry group.
            key: what the value depends on.

        Returns:
            The path.
        """
        if self.root is None:
            return None
        return self.root / kind / f"{digest({'v': CACHE_VERSION, **_versions(), **key})}.json"

    def get(self, kind: str, key: Mapping[str, Any]) -> Any | None:
        """The cached value, or None on a miss. Corrupted entries are warned about and ignored.

        Args:
            kind: entry group.
            key: what the value depends on.

        Returns:
            The stored value or None.
        """
        path = self.path(kind, key)
        if path is None or not path.is_file():
            self._count(kind, False)
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(entry, dict) or "value" not in entry:
                raise ValueError("no 'value' field")
            if digest(entry.get("key")) != digest(json.loads(json.dumps(dict(key), default=str))):
                raise ValueError("stored key differs from the requested key")
            if not _valid(entry["value"]):
                raise ValueError("value holds NaN")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            log.warning("cache entry %s is corrupted (%s); ignoring it and recomputing", path, e)
            self._count(kind, False)
            return None
        self._count(kind, True)
        return entry["value"]

    def put(self, kind: str, key: Mapping[str, Any], value: Any) -> Any:
        """Store ``value`` (JSON-able) under ``key``, atomically.

        Args:
            kind: entry group.
            key: what the value depends on.
            value: the data.

        Returns:
            ``value``.
        """
        path = self.path(kind, key)
        if path is not None and not self.read_only:
            text = json.dumps({"key": dict(key), "value": value}, default=str, indent=0)
            try:
                atomic_write_text(path, text)
            except OSError as e:  # a full disk or a read-only folder: go on without saving
                log.warning("cannot write the cache in %s (%s); not saving to it", self.root, e)
                self.read_only = True
        return value

    def remember_evaluation(
        self, ident: Mapping[str, Any], reference: Mapping[str, float], parts: Mapping[str, str]
    ) -> str | None:
        """Record this run's float reference of an evaluation; say when it changed since the last.

        ``ident`` names the evaluation without its content (model, data, function name), so a
        changed evaluation finds the record of its previous version. The measurements of that
        version are keyed by its reference and fingerprint and are therefore not reused.

        Args:
            ident: model hash, data hash and the eval function's name.
            reference: the float model's metrics measured in this run.
            parts: the eval function's fingerprint, part by part (``Fingerprint.parts``).

        Returns:
            A sentence when the evaluation changed since the previous run, else None.
        """
        path = self.path("evaluation", ident)
        if path is None:
            return None
        now = json.loads(json.dumps({"reference": dict(reference), "parts": dict(parts)}))
        before = None
        with contextlib.suppress(OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            before = json.loads(path.read_text(encoding="utf-8"))["value"]
        atomic_write_text(path, json.dumps({"key": dict(ident), "value": now}, default=str))
        if not isinstance(before, dict) or before == now:
            return None
        old_parts = before.get("parts") or {}
        changed = sorted(k for k in {*old_parts, *now["parts"]} if old_parts.get(k) != parts.get(k))
        what = [f"changed: {', '.join(changed)}"] if changed else []
        if before.get("reference") != now["reference"]:
            what.append(f"float model {before.get('reference')} -> {now['reference']}")
        return (
            f"the evaluation {ident.get('eval')} differs from the previous run's ("
            + "; ".join(what)
            + "): measurements cached for the previous evaluation were not reused"
        )

    def get_or(self, kind: str, key: Mapping[str, Any], compute: Callable[[], Any]) -> Any:
        """``get``, else ``compute()`` and ``put``.

        Args:
            kind: entry group.
            key: what the value depends on.
            compute: produces the value on a miss.

        Returns:
            The value.
        """
        got = self.get(kind, key)
        if got is not None:
            return got
        return self.put(kind, key, compute())


#: Entry kinds holding the eval function's metrics (the others: bytes, latency, proxies).
METRIC_KINDS = ("eval", "sens")


def cache_summary(cache: Cache, notes: Iterable[str] = ()) -> dict[str, Any]:
    """What the cache contributed to a run, for results and reports.

    Args:
        cache: the run's cache.
        notes: sentences to keep with it (e.g. an evaluation that changed since the last run).

    Returns:
        ``{"folder", "hits", "misses", "by_kind": {kind: {"hits", "misses"}}, "notes", "text"}``.
    """
    if cache.root is None:
        text = "cache off: every measurement was made in this run"
    else:
        metric = [cache.by_kind.get(k, [0, 0]) for k in METRIC_KINDS]
        hits, misses = sum(h for h, _ in metric), sum(m for _, m in metric)
        text = (
            f"cache: {hits} metric measurements reused, {misses} made in this run; "
            f"{cache.hits - hits} size/latency/proxy entries reused, {cache.misses - misses} "
            f"computed ({cache.root})"
        )
    notes = list(notes)
    return {
        "folder": None if cache.root is None else str(cache.root),
        "hits": cache.hits,
        "misses": cache.misses,
        "by_kind": {k: {"hits": h, "misses": m} for k, (h, m) in sorted(cache.by_kind.items())},
        "notes": notes,
        "text": " ".join([text + ".", *notes]),
    }
