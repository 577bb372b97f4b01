"""Checks that the tflite2onnx conversion of the Objectron SSD matches LiteRT (the reference).

tflite2onnx warns that fp16 weights are "not supported/tested", so the converted graph is run
on the same random inputs as the original .tflite and the largest difference is printed; the
build fails above 1e-2 (measured: ~4e-4, fp16 rounding).

Runs INSIDE the throwaway tflite venv (needs ai-edge-litert and onnxruntime).
Usage: python check_tflite_parity.py MODEL.tflite MODEL.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter


def main() -> int:
    tflite_path, onnx_path = sys.argv[1], sys.argv[2]
    interpreter = Interpreter(model_path=tflite_path)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outs = interpreter.get_output_details()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(3):
        nhwc = rng.uniform(-1, 1, size=inp["shape"]).astype(np.float32)
        interpreter.set_tensor(inp["index"], nhwc)
        interpreter.invoke()
        reference = {o["name"]: interpreter.get_tensor(o["index"]) for o in outs}
        got = dict(zip(names, session.run(names, {"normalized_input_image_tensor":
                                                  nhwc.transpose(0, 3, 1, 2)}), strict=True))
        for name, value in reference.items():
            worst = max(worst, float(np.abs(value - got[name]).max()))
    print(f"objectron parity max|litert - onnx| = {worst:.2e}")
    return 0 if worst < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
