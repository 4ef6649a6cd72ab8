#!/usr/bin/env python
"""Train FashionNet on Fashion-MNIST and save the float checkpoint the ``fashion`` task uses.

Deterministic: fixed seed, fixed data order and augmentation draws, 2 threads. The checkpoint is
written atomically (temporary file, then ``os.replace``) as safetensors with metadata
(epochs, seed, width, test accuracy, torch version).

Usage:
    python scripts/train_fashion.py [--epochs 4] [--out PATH]

(default PATH: src/quantbalance/tasks/assets/fashion_cnn.safetensors)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
try:
    from quantbalance.tasks.fashion_data import MEAN, STD, load_fashion_mnist
    from quantbalance.tasks.fashion_model import FashionNet
except ModuleNotFoundError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO / "src"))
    from quantbalance.tasks.fashion_data import MEAN, STD, load_fashion_mnist
    from quantbalance.tasks.fashion_model import FashionNet

DEFAULT_OUT = REPO / "src" / "quantbalance" / "tasks" / "assets" / "fashion_cnn.safetensors"


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop (padding ``pad`` with the background value) and random horizontal flip.

    Args:
        x: ``(B, 1, H, W)`` normalised images.
        gen: the generator every random draw comes from.
        pad: padding on each side before cropping back to ``H x W``.

    Returns:
        The augmented batch, same shape.
    """
    b, _, h, w = x.shape
    background = (0.0 - MEAN) / STD
    padded = F.pad(x, (pad, pad, pad, pad), value=background)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None, :]
    cols = dx[:, None] + torch.arange(w)[None, :]
    idx = torch.arange(b)[:, None, None]
    out = padded[:, 0][idx, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent.

    Args:
        model: the classifier (put in eval mode here).
        x: images.
        y: labels.
        batch: evaluation batch size.

    Returns:
        Accuracy in percent.
    """
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return 100.0 * correct / len(x)


def save_atomic(model: torch.nn.Module, out: Path, metadata: dict[str, str]) -> None:
    """Write the model's state dict as safetensors, atomically.

    Args:
        model: the trained model.
        out: destination file.
        metadata: string metadata stored in the safetensors header.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate each epoch, save the final weights.

    Args:
        argv: command-line arguments (``None``: ``sys.argv``).

    Returns:
        Process exit code.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=None, help="folder of the idx files (default: auto)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(args.seed)

    x_train, y_train = load_fashion_mnist("train", args.data_dir)
    x_test, y_test = load_fashion_mnist("test", args.data_dir)
    model = FashionNet(width=args.width)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"FashionNet width={args.width}: {n_params} parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    steps_per_epoch = math.ceil(len(x_train) / args.batch)
    total = args.epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < args.warmup_steps:
            return args.lr * (step + 1) / args.warmup_steps
        t = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
        return 0.5 * args.lr * (1.0 + math.cos(math.pi * t))

    step = 0
    acc = float("nan")
    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum = 0.0
        for i in range(0, len(order), args.batch):
            idx = order[i : i + args.batch]
            xb = augment(x_train[idx], gen)
            yb = y_train[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            step += 1
        acc = accuracy(model, x_test, y_test)
        print(
            f"epoch {epoch}/{args.epochs}: train loss {loss_sum / len(x_train):.4f}, "
            f"test accuracy {acc:.2f}%, elapsed {time.perf_counter() - t0:.0f}s",
            flush=True,
        )

    metadata = {
        "format": "quantbalance.fashion_cnn",
        "model": "FashionNet",
        "width": str(args.width),
        "num_classes": "10",
        "epochs": str(args.epochs),
        "seed": str(args.seed),
        "lr": str(args.lr),
        "batch": str(args.batch),
        "test_accuracy": f"{acc:.2f}",
        "parameters": str(n_params),
        "torch_version": torch.__version__,
        "train_seconds": f"{time.perf_counter() - t0:.0f}",
    }
    save_atomic(model, args.out, metadata)
    print(f"saved {args.out} ({args.out.stat().st_size} bytes), test accuracy {acc:.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
