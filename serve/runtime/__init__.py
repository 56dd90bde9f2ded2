"""Everything that touches onnxruntime lives in this package."""
