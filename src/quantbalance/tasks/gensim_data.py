"""gensim's test data files, which the bundled tasks read as corpora (never training data)."""

from __future__ import annotations

from pathlib import Path

from quantbalance.errors import AssetMissingError


def gensim_datapath(name: str, needed_by: str) -> Path:
    """The path of gensim's test data file ``name``.

    Args:
        name: the file name (e.g. ``lee_background.cor``).
        needed_by: who needs it, for the error (``"task 'smollm' needs"``).

    Returns:
        The file's path.

    Raises:
        AssetMissingError: gensim is not installed, or the file is missing.
    """
    try:
        from gensim.test.utils import datapath  # deferred: gensim is an optional asset package
    except ImportError as exc:
        raise AssetMissingError(
            f"{needed_by} gensim's test data file {name!r}; install it with: pip install gensim"
        ) from exc
    path = Path(datapath(name))
    if not path.is_file():
        raise AssetMissingError(
            f"gensim's test data file {name!r} is missing at {path}; "
            "reinstall it with: pip install --force-reinstall gensim"
        )
    return path
