#!/usr/bin/env python3
"""An independent client for the orders service.

The service's wire format is checked by an implementation that is not ours:
Debian's python3-grpcio for HTTP/2 and gRPC framing, and python3-protobuf
for the messages, generated at test time by protoc from proto/. The test
starts its own nats-server (JetStream, file storage in a temp dir, free
ports) and the orders binary, then calls CreateOrder and GetOrder.

usage: test_orders_python.py --orders-bin PATH --nats-server PATH --proto-dir DIR
Exits 0 when every test passed; the last line is "N passed, M failed".
"""

import argparse
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
import uuid

try:
    import grpc
except ImportError:
    sys.stderr.write(
        "test_orders_python: no grpc module in %s; install python3-grpcio "
        "(Debian) and run with /usr/bin/python3\n" % sys.executable
    )
    sys.exit(2)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}
START_TIMEOUT_S = 60  # generous: sanitizer builds start slowly on 2 cores
CALL_TIMEOUT_S = 10
STOP_TIMEOUT_S = 20

ARGS = None  # set by main()


def free_port():
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(data[-lines:])
    except OSError as e:
        return "(no log: %s)" % e


def wait_until(what, pred, proc, log, timeout=START_TIMEOUT_S):
    """Polls pred() until it is true; fails when proc exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                "%s: process exited with %s during start-up\n%s" % (what, proc.returncode, tail(log))
            )
        try:
            if pred():
                return
        except Exception:  # not up yet: connection refused and the like
            pass
        time.sleep(0.2)
    raise AssertionError("%s: not ready after %ss\n%s" % (what, timeout, tail(log)))


def generate_messages(proto_dir, out_dir):
    """protoc --python_out for orders.proto; returns the imported module."""
    protoc = shutil.which("protoc") or "/usr/bin/protoc"
    rel = "choreo/orders/v1/orders.proto"
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([protoc, "--python_out=" + out_dir, "-I", proto_dir, rel], check=True)
    path = os.path.join(out_dir, "choreo", "orders", "v1", "orders_pb2.py")
    spec = importlib.util.spec_from_file_location("orders_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stop(proc, timeout=STOP_TIMEOUT_S):
    """SIGTERM, then SIGKILL after timeout; returns the exit code (None if
    it had to be killed)."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


class OrdersPythonClient(unittest.TestCase):
    tmp = None
    nats = None
    orders = None
    channel = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="choreo-pyclient-")
        try:
            cls._start()
        except BaseException:
            cls._cleanup()
            raise

    @classmethod
    def _start(cls):
        cls.pb = generate_messages(ARGS.proto_dir, os.path.join(cls.tmp, "gen"))

        nats_port, http_port = free_port(), free_port()
        cls.nats_log = os.path.join(cls.tmp, "nats-server.log")
        with open(cls.nats_log, "wb") as log:
            cls.nats = subprocess.Popen(
                [ARGS.nats_server, "-js", "-sd", os.path.join(cls.tmp, "nats"),
                 "-a", "127.0.0.1", "-p", str(nats_port), "-m", str(http_port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        healthz = "http://127.0.0.1:%d/healthz?js-enabled-only=true" % http_port

        def nats_ready():
            with urllib.request.urlopen(healthz, timeout=2) as r:
                return r.status == 200

        wait_until("nats-server", nats_ready, cls.nats, cls.nats_log)

        cls.addr = "127.0.0.1:%d" % free_port()
        env = dict(os.environ)
        env.update(
            CHOREO_LISTEN_ADDR=cls.addr,
            CHOREO_NATS_URL="nats://127.0.0.1:%d" % nats_port,
            CHOREO_LOG_LEVEL="info",
        )
        cls.orders_log = os.path.join(cls.tmp, "orders.log")
        with open(cls.orders_log, "wb") as log:
            cls.orders = subprocess.Popen(
                [ARGS.orders_bin], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def serving():
            # A fresh channel per attempt: a channel that failed to connect
            # backs off for seconds before it tries again.
            with grpc.insecure_channel(cls.addr) as ch:
                return ch.unary_unary(HEALTH_CHECK)(b"", timeout=2) == SERVING

        wait_until("orders health", serving, cls.orders, cls.orders_log)
        cls.channel = grpc.insecure_channel(cls.addr)

        pb = cls.pb
        cls.create = cls.channel.unary_unary(
            "/choreo.orders.v1.Orders/CreateOrder",
            request_serializer=pb.CreateOrderRequest.SerializeToString,
            response_deserializer=pb.CreateOrderResponse.FromString,
        )
        cls.get = cls.channel.unary_unary(
            "/choreo.orders.v1.Orders/GetOrder",
            request_serializer=pb.GetOrderRequest.SerializeToString,
            response_deserializer=pb.GetOrderResponse.FromString,
        )

    @classmethod
    def _cleanup(cls):
        if cls.channel is not None:
            cls.channel.close()
            cls.channel = None
        stop(cls.orders)
        stop(cls.nats)
        if cls.tmp:
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls._cleanup()

    def new_request(self, customer="c-1", key=""):
        pb = self.pb
        return pb.CreateOrderRequest(
            customer_id=customer,
            items=[pb.LineItem(sku="sku-1", quantity=2, unit_price_cents=1500)],
            idempotency_key=key,
        )

    def test_create_order(self):
        resp = self.create(self.new_request(), timeout=CALL_TIMEOUT_S)
        o = resp.order
        self.assertTrue(o.order_id.startswith("ord-"), o.order_id)
        self.assertEqual(o.customer_id, "c-1")
        self.assertEqual(o.status, self.pb.ORDER_STATUS_PENDING)
        self.assertEqual(o.total_cents, 3000)
        self.assertEqual(len(o.items), 1)
        self.assertEqual((o.items[0].sku, o.items[0].quantity, o.items[0].unit_price_cents), ("sku-1", 2, 1500))
        self.assertFalse(resp.replayed)

    def test_get_order_returns_the_created_order(self):
        created = self.create(self.new_request(), timeout=CALL_TIMEOUT_S).order
        got = self.get(self.pb.GetOrderRequest(order_id=created.order_id), timeout=CALL_TIMEOUT_S).order
        self.assertEqual(got.order_id, created.order_id)
        self.assertEqual(got.customer_id, "c-1")
        self.assertEqual(got.status, self.pb.ORDER_STATUS_PENDING)
        self.assertEqual(got.total_cents, 3000)
        self.assertEqual(list(got.items), list(created.items))
        self.assertEqual(got.created_at_unix_ms, created.created_at_unix_ms)

    def test_create_without_customer_is_invalid_argument(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.create(self.new_request(customer=""), timeout=CALL_TIMEOUT_S)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("customer_id", cm.exception.details() or "")

    def test_get_unknown_order_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.get(self.pb.GetOrderRequest(order_id="ord-0000000000000000"), timeout=CALL_TIMEOUT_S)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_idempotency_key_replays_the_same_order(self):
        key = "py-" + uuid.uuid4().hex
        first = self.create(self.new_request(key=key), timeout=CALL_TIMEOUT_S)
        second = self.create(self.new_request(key=key), timeout=CALL_TIMEOUT_S)
        self.assertFalse(first.replayed)
        self.assertTrue(second.replayed)
        self.assertEqual(second.order.order_id, first.order.order_id)
        self.assertEqual(second.order.total_cents, 3000)

    def test_sigterm_exits_zero(self):
        """Runs last (main() orders the suite): the service stops cleanly."""
        cls = type(self)
        cls.channel.close()
        cls.channel = None
        code = stop(cls.orders)
        self.assertEqual(code, 0, "orders exit status %s after SIGTERM\n%s" % (code, tail(cls.orders_log)))


TEST_ORDER = [
    "test_create_order",
    "test_get_order_returns_the_created_order",
    "test_create_without_customer_is_invalid_argument",
    "test_get_unknown_order_is_not_found",
    "test_idempotency_key_replays_the_same_order",
    "test_sigterm_exits_zero",
]


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders-bin", required=True)
    p.add_argument("--nats-server", default=shutil.which("nats-server") or "/usr/sbin/nats-server")
    p.add_argument("--proto-dir", required=True)
    ARGS = p.parse_args()
    for path in (ARGS.orders_bin, ARGS.nats_server):
        if not os.access(path, os.X_OK):
            sys.stderr.write("test_orders_python: %s is not an executable\n" % path)
            print("0 passed, 1 failed")
            return 1

    suite = unittest.TestSuite(OrdersPythonClient(name) for name in TEST_ORDER)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = max(result.testsRun - len(result.failures) - len(result.errors), 0)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if result.wasSuccessful() and failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
