"""Your torchvision/timm-style CNN + an image folder -> quantized, compared, exported to ONNX.

    python examples/cnn_image_folder.py --weights cnn.safetensors --data images/ --out out/cnn

`images/` holds one subfolder per class (`cat/1.png`, `dog/7.jpg`, ...), as torchvision's
ImageFolder reads it; the class folders give labels, so accuracy and F1 are measured beside
fidelity to the float model. Replace `build_model` with your own network (e.g.
`torchvision.models.resnet18(num_classes=...)` or `timm.create_model(...)`) and pass a
`transform_fn` if your images need resizing or normalisation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

import quantbalance as qb


class Block(nn.Module):
    """conv-BN-ReLU, conv-BN, plus the input: a ResNet basic block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def build_model(num_classes: int, width: int = 16) -> nn.Module:
    """A small ResNet-style CNN (stem, two residual blocks, global pooling, classifier)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        Block(width),
        Block(width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


def main(argv: list[str] | None = None) -> dict[str, qb.Comparison]:
    """Quantize with each preset, print the comparison, export the first preset to ONNX QDQ.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        Preset name -> comparison with the float model.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="the CNN's state_dict (.safetensors)")
    ap.add_argument("--data", required=True, help="image folder, one subfolder per class")
    ap.add_argument("--preset", action="append", default=None, help="presets (default w8a8)")
    ap.add_argument("--out", type=Path, default=Path("out/cnn"))
    args = ap.parse_args(argv)

    classes = sorted(p.name for p in Path(args.data).iterdir() if p.is_dir())
    model = build_model(len(classes))
    model.load_state_dict(load_file(args.weights))  # safetensors: no pickle
    task = qb.tasks.from_model(model.eval(), args.data, labels=True, batch_size=16)
    results = {}
    for preset in args.preset or ["w8a8"]:
        qmodel = qb.quantize(model, preset, calib_data=task.calib_data)
        cmp = qb.compare(model, qmodel, task)
        results[preset] = cmp
        print(
            f"{preset}: accuracy {cmp.float_metrics['accuracy']:.1f} -> "
            f"{cmp.quant_metrics['accuracy']:.1f} %, top-1 agreement "
            f"{cmp.quant_metrics['top1_agreement']:.1f} %, {cmp.compression:.2f}x smaller"
        )
        if len(results) == 1:
            path = qb.export_onnx(qmodel, task.example_inputs, args.out / f"cnn-{preset}.onnx")
            print(f"ONNX QDQ written to {path}")
    return results


if __name__ == "__main__":
    main()
