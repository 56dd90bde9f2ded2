"""Protobuf and gRPC code generated from protos/*.proto by protos/generate.py; do not edit."""
