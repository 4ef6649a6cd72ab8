"""Atomic file writes: a temporary file in the target folder, then an atomic rename."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantbalance.errors import ConfigError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file that is then renamed.

    Args:
        path: final path (its folder is created if needed).
        write: callback that writes the temporary file at the path it is given.

    Returns:
        The final path.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{str(path)!r} is a folder; give a file path, e.g. {path / 'out'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"cannot write {str(path)!r}: a part of {str(path.parent)!r} is a file, not a folder"
        ) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; outputs get normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text atomically.

    Args:
        path: final path.
        text: content (UTF-8).

    Returns:
        The final path.
    """
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def json_safe(x: Any) -> Any:
    """``x`` ready for strict JSON: non-finite floats become None, dict keys strings.

    Args:
        x: nested dicts, lists/tuples and scalars.

    Returns:
        The same structure (tuples as lists) with ``nan``/``inf`` replaced by None.

    Example:
        >>> json_safe({1: [0.5, float("nan")]})
        {'1': [0.5, None]}
    """
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
