"""The gateway's own wire-compatible protos, under private proto packages.

The gateway must not import tensorflow, torch or tritonclient, and tests import those official messages in
the same process, where protobuf refuses a second ``tensorflow.TensorProto`` in the default descriptor pool.
So the .proto files here copy the originals' field numbers, types, labels and enum values exactly but live in
private packages; only the package differs (tests/contract/test_proto_compat.py proves byte compatibility):

=========================  ====================================  =====================================
private package            public package                        module
=========================  ====================================  =====================================
gateway.v2                 inference (Open Inference Protocol)   v2_pb2
gateway.tf                 tensorflow                            tf_framework_pb2
gateway.tf.error           tensorflow.error                      tf_error_codes_pb2
gateway.tf.serving         tensorflow.serving                    tf_serving_pb2
gateway.torchserve.*       org.pytorch.serve.grpc.*              torchserve_{inference,management}_pb2
gateway.rpc                google.rpc                            rpc_status_pb2
gateway.etcd               etcdserverpb (etcd v3 API)            etcd_rpc_pb2
gateway.etcd.mvcc          mvccpb (etcd's stored key-values)     etcd_kv_pb2
=========================  ====================================  =====================================

Consequences: never use generated service stubs (their method paths would carry the private package):
``gateway.protos.services`` lists the public method paths with their message classes. Any.Pack/Unpack
would write and expect private type URLs: use :func:`pack_any` / :func:`unpack_any`. gRPC server reflection
needs the public names: ``gateway.protos.reflection.public_pool()``.

The *_pb2 modules are generated (git-ignored) by a build step, ``python -m gateway.protos`` (``make``,
scripts/bootstrap and the Dockerfile run it). Importing never writes into the package: an installed image is
read-only, and a missing module is a clear ImportError naming that command.
"""

from __future__ import annotations

import importlib.util
from typing import TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import Message

#: The generated modules (``python -m gateway.protos``), the first one missing, if any.
_GENERATED = (
    "etcd_kv_pb2", "etcd_rpc_pb2", "rpc_status_pb2", "tf_error_codes_pb2", "tf_framework_pb2",
    "tf_model_server_config_pb2", "tf_serving_pb2", "torchserve_inference_pb2", "torchserve_management_pb2", "v2_pb2",
)
_MISSING = next((f"{__name__}.{m}" for m in _GENERATED if importlib.util.find_spec(f"{__name__}.{m}") is None), None)
if _MISSING is None:
    from gateway.protos import (
        etcd_kv_pb2,
        etcd_rpc_pb2,
        rpc_status_pb2,
        tf_error_codes_pb2,
        tf_framework_pb2,
        tf_model_server_config_pb2,
        tf_serving_pb2,
        torchserve_inference_pb2,
        torchserve_management_pb2,
        v2_pb2,
    )
# Otherwise the package itself stays importable, so that ``python -m gateway.protos`` can generate the modules,
# and asking for any of them (``from gateway.protos import v2_pb2``) raises the ImportError of __getattr__.

__all__ = [
    "PUBLIC_PACKAGES",
    "TYPE_URL_PREFIX",
    "etcd_kv_pb2",
    "etcd_rpc_pb2",
    "pack_any",
    "private_name",
    "public_name",
    "rpc_status_pb2",
    "tf_error_codes_pb2",
    "tf_framework_pb2",
    "tf_model_server_config_pb2",
    "tf_serving_pb2",
    "torchserve_inference_pb2",
    "torchserve_management_pb2",
    "type_url",
    "unpack_any",
    "v2_pb2",
]

#: Private proto package prefix -> public one (a prefix maps its sub-packages too).
PUBLIC_PACKAGES: dict[str, str] = {
    "gateway.v2": "inference",
    "gateway.tf": "tensorflow",
    "gateway.torchserve": "org.pytorch.serve.grpc",
    "gateway.rpc": "google.rpc",
    "gateway.etcd": "etcdserverpb",
    "gateway.etcd.mvcc": "mvccpb",
}
TYPE_URL_PREFIX = "type.googleapis.com/"

_M = TypeVar("_M", bound=Message)


def __getattr__(name: str) -> object:
    if _MISSING is not None and name.endswith("_pb2"):
        raise ImportError(
            f"gateway.protos: the generated module {_MISSING} is missing; generate the modules with "
            "`python -m gateway.protos` (a build step: make, scripts/bootstrap and the Dockerfile run it)"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _swap(full_name: str, table: dict[str, str]) -> str:
    leading = "." if full_name.startswith(".") else ""
    name = full_name[len(leading) :]
    for old in sorted(table, key=len, reverse=True):
        if name == old or name.startswith(old + "."):
            return leading + table[old] + name[len(old) :]
    return full_name


def public_name(full_name: str) -> str:
    """``gateway.tf.serving.PredictRequest`` -> ``tensorflow.serving.PredictRequest``; others unchanged.

    A leading dot (a descriptor's type_name) is kept.
    """
    return _swap(full_name, PUBLIC_PACKAGES)


def private_name(full_name: str) -> str:
    """The inverse of :func:`public_name` for the mirrored packages; others unchanged."""
    return _swap(full_name, {public: private for private, public in PUBLIC_PACKAGES.items()})


def type_url(message: Message | type[Message]) -> str:
    """The public Any type URL, e.g. ``type.googleapis.com/tensorflow.serving.SignatureDefMap``."""
    return TYPE_URL_PREFIX + public_name(message.DESCRIPTOR.full_name)


def pack_any(message: Message) -> any_pb2.Any:
    """Any.Pack with the public type URL (what TF Serving and its clients expect)."""
    return any_pb2.Any(type_url=type_url(message), value=message.SerializeToString())


def unpack_any(value: any_pb2.Any, cls: type[_M]) -> _M | None:
    """Parse ``value`` as ``cls`` when its type URL names cls's public (or private) type, else None."""
    name = value.type_url.rpartition("/")[2]
    if name not in (public_name(cls.DESCRIPTOR.full_name), cls.DESCRIPTOR.full_name):
        return None
    message: _M = cls()
    message.ParseFromString(value.value)
    return message
