"""Gives the tf2onnx NanoDet graph readable tensor names: ``input``, ``cls_8``, ``reg_8``, ...

tf2onnx names the outputs ``Identity:0`` ... ``Identity_5:0`` in an order that depends on the
TensorFlow.js graph, so the wrapper would have to guess which is which. The outputs are told
apart by shape instead: ``[1, N, 80]`` are class scores and ``[1, N, 44]`` box regressions, and
``N = (416 / stride)^2`` gives the stride.

The graph declares symbolic output shapes, so the real ones come from one ONNX Runtime pass;
they are then written into the graph so that tools show them.

Runs INSIDE the throwaway tf2onnx venv (needs ``onnx`` and ``onnxruntime``).
Usage: python rename_nanodet_io.py FILE
"""

from __future__ import annotations

import math
import sys

import numpy as np
import onnx
import onnxruntime as ort

INPUT_SIZE = 416


def output_shapes(path: str) -> dict[str, tuple[int, ...]]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)}
    names = [o.name for o in session.get_outputs()]
    return {name: value.shape for name, value in zip(names, session.run(names, feed), strict=True)}


def rename(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    graph = model.graph
    mapping: dict[str, str] = {}
    for value in graph.input:
        mapping[value.name] = "input"
    for value in graph.output:
        dims = shapes[value.name]
        anchors, channels = dims[1], dims[2]
        shape = value.type.tensor_type.shape
        for dim, size in zip(shape.dim, dims, strict=True):
            dim.Clear()
            dim.dim_value = size
        stride = INPUT_SIZE // math.isqrt(anchors)
        kind = {80: "cls", 44: "reg"}[channels]
        mapping[value.name] = f"{kind}_{stride}"
    for value in list(graph.input) + list(graph.output):
        value.name = mapping[value.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]
    return mapping


def main() -> int:
    path = sys.argv[1]
    shapes = output_shapes(path)
    model = onnx.load(path)
    mapping = rename(model, shapes)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    for old, new in sorted(mapping.items(), key=lambda kv: kv[1]):
        print(f"{old} -> {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
