"""The descriptor pool that holds serve's ``inference.*`` protobuf types.

tritonclient registers its own ``inference.ModelInferRequest`` and friends in protobuf's
default pool, and a pool refuses a second definition of the same symbol. Keeping ours in
a private pool lets both live in one process (tests, or a server embedding the client).
Pass ``POOL`` wherever a pool is needed, such as gRPC server reflection.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
