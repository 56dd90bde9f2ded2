"""Several worker processes behind one HTTP and one gRPC port, and the supervisor that runs them."""
