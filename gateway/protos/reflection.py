"""A descriptor pool with the gateway's protos under their PUBLIC names, for gRPC server reflection.

The generated modules register ``gateway.tf.serving.PredictRequest`` and friends in protobuf's default pool;
clients that use reflection (grpcurl, Postman, grpc_cli) must see ``tensorflow.serving.PredictRequest`` and
``tensorflow.serving.PredictionService`` instead. :func:`public_pool` copies every gateway file, renames its
package, every fully-qualified type reference and the services (defined in the .proto files with exactly the
methods the gateway serves or calls), and adds the copies, with their well-known-type dependencies, to a
separate pool::

    from grpc_reflection.v1alpha import reflection
    reflection.enable_server_reflection(
        [services.PREDICTION_SERVICE, reflection.SERVICE_NAME], server,
        pool=public_pool(reflection_pb2.DESCRIPTOR),
    )

Pass extra files (the reflection and health services' own descriptors) so that they resolve as well.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from gateway.protos import (
    public_name,
    rpc_status_pb2,
    tf_error_codes_pb2,
    tf_framework_pb2,
    tf_model_server_config_pb2,
    tf_serving_pb2,
    torchserve_inference_pb2,
    torchserve_management_pb2,
    v2_pb2,
)

#: The gateway's generated files, in protobuf's default pool under their private names.
GATEWAY_FILES: tuple[FileDescriptor, ...] = (
    rpc_status_pb2.DESCRIPTOR,
    tf_error_codes_pb2.DESCRIPTOR,
    tf_framework_pb2.DESCRIPTOR,
    tf_model_server_config_pb2.DESCRIPTOR,
    tf_serving_pb2.DESCRIPTOR,
    torchserve_inference_pb2.DESCRIPTOR,
    torchserve_management_pb2.DESCRIPTOR,
    v2_pb2.DESCRIPTOR,
)
_GATEWAY_FILE_NAMES = frozenset(file.name for file in GATEWAY_FILES)


def _rename_field(field: descriptor_pb2.FieldDescriptorProto) -> None:
    # descriptor.proto is proto2: assigning "" would make an unset type_name present (and invalid).
    if field.HasField("type_name"):
        field.type_name = public_name(field.type_name)
    if field.HasField("extendee"):
        field.extendee = public_name(field.extendee)


def _rename_message(message: descriptor_pb2.DescriptorProto) -> None:
    for field in (*message.field, *message.extension):
        _rename_field(field)
    for nested in message.nested_type:
        _rename_message(nested)


def public_file_proto(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    """A copy of one gateway file with public package, type references and service names."""
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    if file.name not in _GATEWAY_FILE_NAMES:
        return proto
    proto.package = public_name(proto.package)
    for message in proto.message_type:
        _rename_message(message)
    for field in proto.extension:
        _rename_field(field)
    for service in proto.service:
        for method in service.method:
            method.input_type = public_name(method.input_type)
            method.output_type = public_name(method.output_type)
    return proto


def _in_dependency_order(files: Iterable[FileDescriptor]) -> list[FileDescriptor]:
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for file in files:
        visit(file)
    return ordered


def public_pool(*extra_files: FileDescriptor) -> descriptor_pool.DescriptorPool:
    """A new pool: the gateway's files under public names, their dependencies, and ``extra_files`` as they are."""
    pool = descriptor_pool.DescriptorPool()
    for file in _in_dependency_order((*GATEWAY_FILES, *extra_files)):
        pool.AddSerializedFile(public_file_proto(file).SerializeToString())
    return pool


#: The services the public pool describes (those defined in gateway/protos/*.proto, under public names).
PUBLIC_SERVICES: tuple[str, ...] = tuple(
    public_name(service.full_name) for file in GATEWAY_FILES for service in file.services_by_name.values()
)
