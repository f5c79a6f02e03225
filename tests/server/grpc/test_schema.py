"""imgserve's .proto against the protocol as NVIDIA's client knows it, and the committed stubs
against what the .proto generates."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from tritonclient.grpc import model_config_pb2, service_pb2

from server.grpc_api import inference_pb2 as pb
from server.grpc_api.regenerate import HERE, descriptor, generate


def _triton(full_name: str) -> Descriptor:
    name = full_name.removeprefix("inference.")
    for module in (service_pb2, model_config_pb2):
        found = module.DESCRIPTOR.message_types_by_name.get(name.split(".")[0])
        if found is not None:
            for nested in name.split(".")[1:]:
                found = found.nested_types_by_name[nested]
            return found
    raise KeyError(full_name)


def _messages(descriptor: Descriptor) -> list[Descriptor]:
    return [descriptor] + [m for nested in descriptor.nested_types for m in _messages(nested)]


OURS = [m for top in pb.DESCRIPTOR.message_types_by_name.values() for m in _messages(top)]


def _kind(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return field.message_type.full_name
    if field.enum_type is not None:
        return field.enum_type.full_name
    return str(field.type)


@pytest.mark.parametrize("ours", OURS, ids=[m.full_name for m in OURS])
def test_every_field_has_the_protocols_number_type_and_cardinality(ours: Descriptor) -> None:
    theirs = _triton(ours.full_name)
    for field in ours.fields:
        twin = theirs.fields_by_name.get(field.name)
        assert twin is not None, f"{ours.full_name}.{field.name} is not in the protocol"
        assert (field.number, _kind(field), field.is_repeated) == (twin.number, _kind(twin), twin.is_repeated)
        assert (field.containing_oneof is None) == (twin.containing_oneof is None)


def _enums(descriptor: Descriptor | None) -> list[EnumDescriptor]:
    if descriptor is None:
        return list(pb.DESCRIPTOR.enum_types_by_name.values())
    return list(descriptor.enum_types) + [e for nested in descriptor.nested_types for e in _enums(nested)]


def test_every_enum_value_has_the_protocols_number() -> None:
    enums = _enums(None) + [e for m in OURS for e in m.enum_types]
    assert {e.name for e in enums} >= {"DataType", "Format", "TimeoutAction"}
    for enum in enums:
        theirs = model_config_pb2.DESCRIPTOR.enum_types_by_name.get(enum.name)
        if theirs is None:
            theirs = _triton(enum.containing_type.full_name).enum_types_by_name[enum.name]
        assert {v.name: v.number for v in enum.values} == {v.name: v.number for v in theirs.values}


def test_the_service_methods_are_the_protocols() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        twin = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            twin.input_type.full_name,
            twin.output_type.full_name,
        )
        assert not method.client_streaming and not method.server_streaming


def test_a_message_of_ours_is_read_by_tritonclient_and_back() -> None:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="x", raw_input_contents=[b"\x01\x02"])
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 2]).parameters["p"].int64_param = 7
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 3
    theirs = service_pb2.ModelInferRequest.FromString(request.SerializeToString())
    assert theirs.inputs[0].shape == [1, 2] and theirs.outputs[0].parameters["classification"].int64_param == 3
    assert pb.ModelInferRequest.FromString(theirs.SerializeToString()) == request


def test_the_committed_stubs_are_what_the_proto_generates(tmp_path: Path) -> None:
    """`make protos` was run after the last change to inference.proto: the stubs describe what
    protoc reads in it now (compared as descriptors: another grpcio-tools writes other text)."""
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert committed == descriptor_pb2.FileDescriptorProto.FromString(descriptor(tmp_path)), "run `make protos`"
    assert set(generate(tmp_path)) == {path.name for path in HERE.glob("inference_pb2.py*")}


def test_the_stubs_live_in_a_pool_of_their_own() -> None:
    """tritonclient registers the same names in protobuf's default pool (imported above)."""
    assert pb.DESCRIPTOR.pool is pb.POOL
    assert pb.ModelInferRequest.DESCRIPTOR is not service_pb2.ModelInferRequest.DESCRIPTOR
