"""Generated protobuf/gRPC code for the wire contract in proto/fedonco/v1/ (package fedonco.v1).

Everything here except this file is written by ``python proto/gen.py``: never edit it by hand,
regenerate it. ``tests/unit/test_proto_fresh.py`` fails when it is stale. Only common/wire/serde.py
converts tensors to and from these messages; the gRPC servicer and client import the stubs.

    from common.wire.rpc import federation_pb2, federation_pb2_grpc, types_pb2
"""
