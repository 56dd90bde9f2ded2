"""What the server records about itself: Triton's statistics extension and Prometheus metrics."""
