"""gRPC calls handed from one front end to worker processes: HTTP/2 is terminated once (in the supervisor), and
each ModelInfer call's bytes go to a worker over a Unix socket, so one client connection reaches every worker
(bench/README.md, "HTTP/2 terminated once, calls handed to workers").

``serve run --workers N --grpc-frontend native`` (N > 1, no TLS) runs it: the supervisor's front.py on the gRPC
port, and in each worker a worker.py listener plus a grpc.aio server for every other method, on the Unix sockets
that serve/roles.py's GrpcHandoff names (worker 0's grpc.aio server takes the other methods)."""
