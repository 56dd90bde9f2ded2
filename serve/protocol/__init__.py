"""Wire types of the Open Inference Protocol, Triton's model configuration and serve's monitoring
service: protobuf and gRPC code generated from protos/*.proto by protos/generate.py; do not edit.

It sits below every other package, so the repository, the core and the adapters all import it
downward; nothing here imports serve.
"""
