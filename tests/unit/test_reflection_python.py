#!/usr/bin/python3
"""Health and reflection as another gRPC implementation sees them.

python3-grpcio talks to reflection_test_server the way grpcurl would: it lists
the services over reflection (v1 and v1alpha), fetches their files, builds a
descriptor pool from nothing but those answers, and calls Health.Check with
message classes made from that pool.

usage: test_reflection_python.py <reflection_test_server> <choreo.desc>
Exit 0 on success, 1 on failure, 77 when python3-grpcio/protobuf are missing.
"""
import signal
import subprocess
import sys

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as e:  # pragma: no cover
    print(f"skipped: {e}")
    sys.exit(77)

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
EXPECTED = {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"}


def classes(pool, *names):
    factory = message_factory.MessageFactory(pool)
    return [factory.GetPrototype(pool.FindMessageTypeByName(n)) for n in names]


def pool_from_set(path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fdp in fds.file:
        pool.Add(fdp)
    return pool


def exchange(channel, path, Req, Resp, requests):
    call = channel.stream_stream(path, request_serializer=Req.SerializeToString,
                                 response_deserializer=Resp.FromString)
    return list(call(iter(requests), timeout=10))


def main():
    server_bin, desc_path = sys.argv[1], sys.argv[2]
    Req, Resp = classes(pool_from_set(desc_path), "grpc.reflection.v1.ServerReflectionRequest",
                        "grpc.reflection.v1.ServerReflectionResponse")
    server = subprocess.Popen([server_bin], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip()
        assert line.startswith("port="), f"server said {line!r}"
        channel = grpc.insecure_channel(f"127.0.0.1:{line[5:]}")

        # v1: list, then the files of every service, on one stream.
        out = exchange(channel, V1, Req, Resp, [Req(host="h", list_services="*")])
        names = {s.name for s in out[0].list_services_response.service}
        assert EXPECTED <= names, names
        assert out[0].valid_host == "h" and out[0].original_request.list_services == "*"

        reqs = [Req(file_containing_symbol=n) for n in sorted(names)]
        reqs.append(Req(file_containing_symbol="no.such.Symbol"))
        reqs.append(Req(file_by_filename="choreo/orders/v1/orders.proto"))
        out = exchange(channel, V1, Req, Resp, reqs)
        assert len(out) == len(reqs)
        assert out[-2].WhichOneof("message_response") == "error_response"
        assert out[-2].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert out[-1].WhichOneof("message_response") == "file_descriptor_response"

        # A pool built only from what reflection returned, as grpcurl does.
        reflected = descriptor_pool.DescriptorPool()
        seen = set()
        for resp in out:
            for blob in resp.file_descriptor_response.file_descriptor_proto:
                fdp = descriptor_pb2.FileDescriptorProto.FromString(blob)
                if fdp.name not in seen:
                    seen.add(fdp.name)
                    reflected.Add(fdp)
        assert "choreo/orders/v1/orders.proto" in seen, seen
        orders = reflected.FindFileByName("choreo/orders/v1/orders.proto").services_by_name["Orders"]
        assert orders.methods_by_name["CreateOrder"].input_type.full_name == "choreo.orders.v1.CreateOrderRequest"
        health = reflected.FindServiceByName("grpc.health.v1.Health")
        assert {m.name for m in health.methods} == {"Check", "Watch"}

        HReq, HResp = classes(reflected, "grpc.health.v1.HealthCheckRequest", "grpc.health.v1.HealthCheckResponse")
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=HReq.SerializeToString,
                                    response_deserializer=HResp.FromString)
        assert check(HReq(service=""), timeout=5).status == 1  # SERVING
        assert check(HReq(service="grpc.health.v1.Health"), timeout=5).status == 1
        try:
            check(HReq(service="nope"), timeout=5)
            raise AssertionError("unknown service answered")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()

        # v1alpha: same wire format, same answers.
        out = exchange(channel, V1ALPHA, Req, Resp, [Req(list_services=""),
                                                     Req(file_containing_symbol="grpc.health.v1.Health.Check")])
        assert EXPECTED <= {s.name for s in out[0].list_services_response.service}
        assert len(out[1].file_descriptor_response.file_descriptor_proto) == 1
        channel.close()
    finally:
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=15)
    assert rc == 0, f"server exit {rc}"
    print("ok")


if __name__ == "__main__":
    main()
