"""What a worker serves: the loader (hot swap), predict, kernels, cache, ONNX runtime."""
