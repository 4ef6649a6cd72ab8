"""``quantbalance quantize --hf PATH --offload disk --save OUT``: an LM larger than memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from quantbalance.errors import ConfigError
from quantbalance.quantize import quantize


def text_calibration(folder: Path, text_file: Path, n: int, seq: int) -> list[dict[str, Any]]:
    """``n`` windows of ``seq`` tokens from a text file, tokenized with the model's tokenizer.

    Args:
        folder: the Hugging Face model folder (its tokenizer files).
        text_file: a UTF-8 text file.
        n: windows.
        seq: tokens per window.

    Returns:
        ``[{"input_ids": (1, seq) tensor}, ...]``.
    """
    from transformers import AutoTokenizer  # deferred: transformers is an optional extra

    if not text_file.is_file():
        raise ConfigError(f"--calib-text {text_file}: no such file")
    try:
        tok = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder}: no usable tokenizer for --calib-text ({e})") from None
    ids = tok(text_file.read_text(encoding="utf-8"), return_tensors="pt")["input_ids"][0]
    if ids.numel() < n * seq:
        raise ConfigError(
            f"--calib-text {text_file}: {ids.numel()} tokens, fewer than {n} x {seq}; give a "
            "longer text or fewer/shorter windows (--calib-n, --calib-seq)"
        )
    return [{"input_ids": ids[i * seq : (i + 1) * seq].reshape(1, seq).clone()} for i in range(n)]


def quantize_offloaded_cli(
    hf: str | None,
    plan: str,
    algorithm: str | None,
    offload: str,
    save: Path | None,
    calib_text: Path | None,
    calib_n: int,
    calib_seq: int,
    device: str | None,
    console: Console,
) -> Path:
    """Run ``qb.quantize(hf, plan, calib, offload=..., save_to=save)`` for the CLI.

    Args:
        hf: the Hugging Face checkpoint folder.
        plan: a preset name or a plan file.
        algorithm: algorithm override.
        offload: ``disk`` or ``cpu``.
        save: the output checkpoint folder.
        calib_text: a text file for calibration windows (GPTQ/AWQ), or None.
        calib_n: calibration windows.
        calib_seq: tokens per window.
        device: calibration device (None: cuda if available).
        console: where to print.

    Returns:
        The checkpoint folder.
    """
    if not hf or save is None:
        raise ConfigError("--offload needs --hf PATH (a Hugging Face folder) and --save OUT")
    folder = Path(hf)
    calib = text_calibration(folder, calib_text, calib_n, calib_seq) if calib_text else None
    with console.status(f"quantizing {folder} block by block ({offload} offload)"):
        out = quantize(str(folder), plan, calib, algorithm=algorithm, offload=offload,
                       save_to=save, device=device)  # fmt: skip
    assert isinstance(out, Path)
    size = sum(p.stat().st_size for p in out.iterdir())
    console.print(f"quantized checkpoint ({size / 1e6:.1f} MB) written to [bold]{out}[/]; "
                  f"load it with qb.load({str(out)!r}, float_skeleton)")  # fmt: skip
    return out
