"""The gateway's minimal etcd protos (gateway/protos/etcd_*.proto) against etcd's own definitions, as generated in
aetcd's package (etcd's api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto; installed with --no-deps by
scripts/bootstrap, for this check only): every message, field and enum value the gateway declares exists in etcd's
with the same number, name, type and label; every method the gateway calls exists with the same message types and
streaming; and bytes written by one side read the same on the other. The gateway's files are subsets (it leaves
out fields it never sets or reads, which parse as unknown fields)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.protos import etcd_kv_pb2, etcd_rpc_pb2, services

official_rpc = pytest.importorskip("aetcd.rpc.rpc_pb2", reason="aetcd (etcd's generated protos) is not installed")
official_kv = pytest.importorskip("aetcd.rpc.kv_pb2", reason="aetcd (etcd's generated protos) is not installed")

RENAMES = {"gateway.etcd.mvcc.": "mvccpb.", "gateway.etcd.": "etcdserverpb."}


def official_name(full_name: str) -> str:
    for private, public in RENAMES.items():
        if full_name.startswith(private):
            return public + full_name[len(private):]
    return full_name


def _official(full_name: str) -> Descriptor:
    name = official_name(full_name)
    module = official_kv if name.startswith("mvccpb.") else official_rpc
    found: Any = module.DESCRIPTOR
    for part in name.split(".")[1:]:
        found = found.message_types_by_name[part] if hasattr(found, "message_types_by_name") \
            else found.nested_types_by_name[part]
    return found  # type: ignore[no-any-return]


def _messages(descriptor: Any) -> list[Descriptor]:
    out = []
    for message in descriptor.message_types_by_name.values() if hasattr(descriptor, "message_types_by_name") \
            else descriptor.nested_types:
        out += [message, *_messages(message)]
    return out


GATEWAY_MESSAGES = [m for file in (etcd_rpc_pb2.DESCRIPTOR, etcd_kv_pb2.DESCRIPTOR) for m in _messages(file)]


@pytest.mark.parametrize("message", GATEWAY_MESSAGES, ids=lambda m: m.full_name)
def test_every_declared_field_is_etcds(message: Descriptor) -> None:
    theirs = _official(message.full_name)
    for field in message.fields:
        official: FieldDescriptor | None = theirs.fields_by_number.get(field.number)
        assert official is not None, f"{message.full_name}.{field.name} ({field.number}) is not in etcd's"
        assert (field.name, field.type, field.is_repeated) == (official.name, official.type, official.is_repeated), \
            field.name
        if field.message_type is not None:
            assert official_name(field.message_type.full_name) == official.message_type.full_name, field.name
        if field.enum_type is not None:
            assert official_name(field.enum_type.full_name) == official.enum_type.full_name, field.name
        assert (field.containing_oneof is None) == (official.containing_oneof is None), field.name
    for enum in message.enum_types:
        _same_enum_values(enum, theirs.enum_types_by_name[enum.name])


def _same_enum_values(mine: EnumDescriptor, theirs: EnumDescriptor) -> None:
    official = {value.name: value.number for value in theirs.values}
    assert {value.name: value.number for value in mine.values}.items() <= official.items(), mine.full_name


@pytest.mark.parametrize("method", services.ETCD_METHODS, ids=lambda m: m.path)
def test_every_called_method_is_etcds(method: services.Method[Any, Any]) -> None:
    service = official_rpc.DESCRIPTOR.services_by_name[method.service.rpartition(".")[2]]
    official = service.methods_by_name[method.name]
    assert official_name(method.request.DESCRIPTOR.full_name) == official.input_type.full_name
    assert official_name(method.response.DESCRIPTOR.full_name) == official.output_type.full_name
    streaming = method.name in ("Watch", "LeaseKeepAlive")  # the bidirectional streams the client opens
    assert (official.client_streaming, official.server_streaming) == (streaming, streaming)


def _round_trip(mine: Message, theirs_type: type[Message]) -> Message:
    theirs = theirs_type.FromString(mine.SerializeToString())
    back = type(mine).FromString(theirs.SerializeToString())
    assert back == mine
    return theirs


def test_bytes_mean_the_same_on_both_sides() -> None:
    txn = etcd_rpc_pb2.TxnRequest(
        compare=[etcd_rpc_pb2.Compare(key=b"/gw/routes", target=etcd_rpc_pb2.Compare.MOD,
                                      result=etcd_rpc_pb2.Compare.EQUAL, mod_revision=41)],
        success=[etcd_rpc_pb2.RequestOp(request_put=etcd_rpc_pb2.PutRequest(key=b"/gw/routes", value=b"r: 2",
                                                                             lease=7))],
        failure=[etcd_rpc_pb2.RequestOp(request_range=etcd_rpc_pb2.RangeRequest(key=b"/gw/routes"))])
    theirs = _round_trip(txn, official_rpc.TxnRequest)
    assert theirs.compare[0].target == official_rpc.Compare.MOD and theirs.compare[0].mod_revision == 41
    assert theirs.success[0].request_put.lease == 7 and theirs.failure[0].request_range.key == b"/gw/routes"
    event = official_kv.Event(type=official_kv.Event.DELETE, kv=official_kv.KeyValue(key=b"k", mod_revision=9))
    response = official_rpc.WatchResponse(watch_id=3, compact_revision=0, events=[event])
    mine = etcd_rpc_pb2.WatchResponse.FromString(response.SerializeToString())
    assert (mine.watch_id, mine.events[0].type, mine.events[0].kv.mod_revision) == (
        3, etcd_kv_pb2.Event.DELETE, 9)
