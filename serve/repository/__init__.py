"""The model repository: Triton's on-disk layout, configs, version policy, load state."""
