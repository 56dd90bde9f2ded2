"""gRPC calls handed from one front end to worker processes: HTTP/2 is terminated once (in the supervisor), and
each ModelInfer call's bytes go to a worker over a Unix socket, so one client connection reaches every worker
(bench/README.md, "HTTP/2 terminated once, calls handed to workers")."""
