"""The gRPC transport: the GRPCInferenceService adapter and its generated protobuf code."""
