"""Ground truth: labels joined to predictions by request id, realized and estimated performance."""
