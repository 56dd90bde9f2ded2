"""Wire encodings of tensors: JSON, Triton's binary extension, protobuf."""
