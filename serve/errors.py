"""One exception tree for everything a request can fail with.

Each class carries its HTTP status and its gRPC status code name; the HTTP and gRPC
adapters each map it exactly once. The tree:

    ServeError                      500 INTERNAL
    ├── InvalidInput                400 INVALID_ARGUMENT
    │   └── UnknownOutput           400 INVALID_ARGUMENT
    ├── NotFound                    404 NOT_FOUND
    │   └── ModelNotFound           404 NOT_FOUND
    ├── ModelNotReady               503 UNAVAILABLE
    ├── PayloadTooLarge             413 RESOURCE_EXHAUSTED
    ├── QueueFull                   429 RESOURCE_EXHAUSTED
    ├── DeadlineExceeded            504 DEADLINE_EXCEEDED
    ├── RequestCancelled            499 CANCELLED
    ├── ModelExecutionError         500 INTERNAL
    ├── Unsupported                 501 UNIMPLEMENTED
    ├── ModelControlDisabled        503 UNAVAILABLE
    ├── ModelLoadError              400 INVALID_ARGUMENT
    └── ShuttingDown                503 UNAVAILABLE
"""

from __future__ import annotations


class ServeError(Exception):
    http_status: int = 500
    grpc_code: str = "INTERNAL"  # a grpc.StatusCode member name; keeps this module free of grpc

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServeError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class UnknownOutput(InvalidInput):
    pass


class NotFound(ServeError):
    http_status = 404
    grpc_code = "NOT_FOUND"


class ModelNotFound(NotFound):
    pass


class ModelNotReady(ServeError):
    http_status = 503
    grpc_code = "UNAVAILABLE"


class PayloadTooLarge(ServeError):
    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class QueueFull(ServeError):
    # 429 rather than 503: the server is healthy, this model's queue is at max_queue_size,
    # and clients and load balancers treat 429 as "back off and retry" without marking the
    # replica unhealthy. Counted as reason "rejected" in the metrics.
    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServeError):
    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"


class RequestCancelled(ServeError):
    # 499 is nginx's "client closed request"; nobody reads it, the client is gone.
    http_status = 499
    grpc_code = "CANCELLED"


class ModelExecutionError(ServeError):
    http_status = 500
    grpc_code = "INTERNAL"


class Unsupported(ServeError):
    http_status = 501
    grpc_code = "UNIMPLEMENTED"


class ModelControlDisabled(ServeError):
    # Triton answers load/unload outside explicit mode with UNAVAILABLE (its HTTP 503), and its
    # clients match the message "explicit model load / unload is not allowed".
    http_status = 503
    grpc_code = "UNAVAILABLE"


class ModelLoadError(ServeError):
    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class ShuttingDown(ServeError):
    http_status = 503
    grpc_code = "UNAVAILABLE"
