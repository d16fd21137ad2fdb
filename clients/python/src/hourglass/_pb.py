"""The generated protobuf and gRPC modules, with a clear error when they were never built.

``hourglass._proto`` is written by the build hook (``hatch_build.py``) from the repository's
``proto/`` directory when the package is installed; it is not kept in version control.
"""

from __future__ import annotations

try:
    from ._proto.v1 import (
        admin_pb2,
        admin_pb2_grpc,
        timers_pb2,
        timers_pb2_grpc,
        workers_pb2,
        workers_pb2_grpc,
    )
except ModuleNotFoundError as error:  # pragma: no cover - depends on how it was installed
    if error.name is None or not error.name.startswith(__package__ + "._proto"):
        raise
    raise ModuleNotFoundError(
        "the generated gRPC modules of the hourglass package are missing; they are generated "
        "from the repository's proto/ directory when the package is built: install it with "
        "`pip install ./clients/python` (or `pip install -e ./clients/python`) from the "
        "repository's root instead of importing it from the source tree",
        name=error.name,
    ) from error

__all__ = [
    "admin_pb2",
    "admin_pb2_grpc",
    "timers_pb2",
    "timers_pb2_grpc",
    "workers_pb2",
    "workers_pb2_grpc",
]
