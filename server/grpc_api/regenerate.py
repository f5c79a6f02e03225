"""Regenerate ``inference_pb2.py`` and ``inference_pb2.pyi`` from ``inference.proto``:
``make protos`` (``python -m server.grpc_api.regenerate``). Needs grpcio-tools (the dev extra).

Two changes to protoc's output. The messages are built in a descriptor pool of their own, not
protobuf's default one. tritonclient (and any other Triton or KServe client or server in Python)
registers the same ``inference.*`` names in the default pool, and two registrations of one name
make the second import fail: with a pool of its own, imgserve's server and those clients can
share a process (tests, benchmarks, a user's own code). And the check that the protobuf runtime
is at least as new as the protoc is dropped (see ``_VERSION_CHECK``)."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROTO = HERE / "inference.proto"
OUTPUTS = ("inference_pb2.py", "inference_pb2.pyi")

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = (
    "# imgserve: a pool of its own, not the default one (see server/grpc_api/regenerate.py).\n"
    "POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = POOL.AddSerializedFile("
)

# protoc's gencode refuses a protobuf runtime older than the protoc that wrote it. These stubs
# use only the builder API protobuf has had since 3.20, so the check is dropped: they load on
# protobuf 4.21 and newer (NGC's TensorFlow image pins protobuf below 5).
_VERSION_CHECK = re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\(.*?\n\)\n", re.S)
_NO_VERSION_CHECK = "# imgserve: no runtime version check (see server/grpc_api/regenerate.py).\n"
_STUB_DESCRIPTOR = "DESCRIPTOR: _descriptor.FileDescriptor\n"
_STUB_POOL = (
    "from google.protobuf import descriptor_pool as _descriptor_pool\n\n"
    "POOL: _descriptor_pool.DescriptorPool\n" + _STUB_DESCRIPTOR
)


def generate(out_dir: Path) -> dict[str, str]:
    """protoc's output for ``inference.proto``, in a pool of its own: file name -> text."""
    relative = PROTO.relative_to(ROOT)
    # In a process of its own: protoc's compiled protobuf crashes a process that has also loaded
    # another (TensorFlow's, in the test suite).
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out_dir}"]
    done = subprocess.run([*command, f"--pyi_out={out_dir}", str(relative)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed on {relative} (exit {done.returncode}): {done.stderr}")
    generated = {name: (out_dir / relative.parent / name).read_text() for name in OUTPUTS}
    module = generated["inference_pb2.py"]
    if module.count(_DEFAULT_POOL) != 1:
        raise RuntimeError("protoc's output no longer adds its file to the default pool as expected: update this")
    module, checks = _VERSION_CHECK.subn(_NO_VERSION_CHECK, module.replace(_DEFAULT_POOL, _OWN_POOL))
    if checks != 1:
        raise RuntimeError("protoc's output no longer checks the runtime version as expected: update this")
    generated["inference_pb2.py"] = module.replace(
        "from google.protobuf import runtime_version as _runtime_version\n", ""
    )
    stub = generated["inference_pb2.pyi"]
    if stub.count(_STUB_DESCRIPTOR) != 1:
        raise RuntimeError("protoc's .pyi no longer declares DESCRIPTOR as expected: update this")
    generated["inference_pb2.pyi"] = stub.replace(_STUB_DESCRIPTOR, _STUB_POOL)
    return generated


def descriptor(out_dir: Path) -> bytes:
    """What protoc makes of ``inference.proto`` (a serialized ``FileDescriptorProto``): the stubs
    embed the same, whatever protoc version generated them."""
    from google.protobuf import descriptor_pb2

    relative, target = PROTO.relative_to(ROOT), out_dir / "inference.binpb"
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--descriptor_set_out={target}", str(relative)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"protoc failed on {relative} (exit {done.returncode}): {done.stderr}")
    (file,) = descriptor_pb2.FileDescriptorSet.FromString(target.read_bytes()).file
    for message in file.message_type:
        _without_json_names(message)  # protoc writes them into a descriptor set, not into stubs
    serialized: bytes = file.SerializeToString()
    return serialized


def _without_json_names(message: Any) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _without_json_names(nested)


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        for name, text in generate(Path(scratch)).items():
            (HERE / name).write_text(text)
            print(f"wrote {(HERE / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
