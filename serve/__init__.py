"""serve: ONNX model serving over the Open Inference Protocol (KServe V2)."""

__version__ = "0.1.0"
