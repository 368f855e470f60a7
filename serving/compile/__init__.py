"""Compilation of stored versions: ONNX conversion with its parity gate, quantization."""
