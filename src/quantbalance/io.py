"""Atomic file writes: a temporary file in the target folder, then an atomic rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


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
        from quantbalance.errors import ConfigError

        raise ConfigError(f"{str(path)!r} is a folder; give a file path, e.g. {path / 'out'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        from quantbalance.errors import ConfigError

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
