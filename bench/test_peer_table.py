#!/usr/bin/env python3
"""The table of `make bench-peer`: peer_table.py on fixture lines of every
summary format (choreo-bench's `bench:` line, the peer driver's JSON,
choreo-bus-floor's `floor:` line), with
every expected median and ratio worked out by hand. Never runs the peer."""
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_table.py")


def choreo(ops, p50, p99, cpu, nats, rss, checks="ok"):
    return (
        f"bench: mode=open n=5000 c=16 orders_per_s={ops} p50_ms={p50} p95_ms=1 p99_ms={p99}"
        f" cpu_s_per_1k={cpu} cpu_s_per_1k_orders=0.1 cpu_s_per_1k_nats={nats} rss_mb_orders={rss}"
        f" rss_mb_inventory=17.5 rss_mb_payment=17.3 rss_mb_notifications=16.0 rss_mb_nats=99.0"
        f" ctxsw_per_order=12.1 checks={checks}"
    )


def peer(ops, p50, p99, cpu, nats_cpu_s, rss_kb, ok=True, n=5000):
    return json.dumps(
        {
            "impl": "go-grpc-nats/fetch=adaptive/publish=sync",
            "n": n,
            "ok": ok,
            "orders_per_s": ops,
            "lat_ms": {"p50": p50, "p95": 1, "p99": p99},
            "cpu_s_per_1000": cpu,
            "nats_server": {"cpu_s": nats_cpu_s, "rss_peak_kb": 99999},
            "rss_peak_kb": {"orders": rss_kb, "inventory": 1024, "payment": 2048, "notifications": 3072},
        }
    )


def floor(ops, p50, p99, cpu, nats, rss, checks="ok"):
    return (
        f"floor: pattern=own mode=open n=5000 c=16 orders_per_s={ops} p50_ms={p50} p95_ms=1 p99_ms={p99}"
        f" create_p50_ms=1 cpu_s_per_1k_relays={cpu} cpu_s_per_1k_orders=0.1 cpu_s_per_1k_nats={nats}"
        f" cpu_s_per_1k_driver=0.08 ctxsw_per_order_relays=20.0 ctxsw_per_order_nats=4.5"
        f" rss_mb_relay_max={rss} writes_in_series=4 writes_per_order=6.00 pushes_per_order=7"
        f" acks_per_order=4 conflicts=0 checks={checks}"
    )


OPEN = "\topen\t16\t5000\t"
CLOSED = "\tclosed\t1\t1000\t"
# Three rounds of open c=16, every run ok. The figures are out of order within
# each implementation so that a median which does not sort fails.
ALL_OK = [
    "# bench-peer fixture",
    "1\tchoreo" + OPEN + choreo(2000, 30.0, 80.0, 0.40, 0.30, 19.0),
    "1\tpeer-sync" + OPEN + peer(2500, 800, 1260, 0.38, 1.25, 27648),
    "1\tpeer-async" + OPEN + peer(4000, 20, 40, 0.20, 0.5, 25600),
    "2\tpeer-async" + OPEN + peer(5000, 25, 50, 0.25, 0.75, 25600),
    "2\tpeer-sync" + OPEN + peer(2400, 810, 1250, 0.36, 1.30, 26624),
    "2\tchoreo" + OPEN + choreo(1800, 40.0, 60.0, 0.30, 0.20, 20.0),
    "",
    "3\tchoreo" + OPEN + choreo(2200, 35.0, 70.0, 0.35, 0.25, 18.0),
    "3\tpeer-sync" + OPEN + peer(2600, 790, 1270, 0.40, 1.35, 28672),
    "3\tpeer-async" + OPEN + peer(4500, 22, 45, 0.15, 0.625, 25600),
]
# closed c=1: two choreo runs with figures (an even count) and one without a
# summary line; the peer failed once with figures and once without any.
WITH_FAILURES = ALL_OK + [
    "1\tchoreo" + CLOSED + choreo(500, 1.5, 4.0, 1.2, 1.0, 15.0),
    "1\tpeer-sync" + CLOSED + peer(700, 1.0, 3.0, 1.0, 1.0, 20480, ok=False, n=1000),
    "1\tpeer-async" + CLOSED + '{"ok": false, "error": "no JSON line"}',
    "2\tchoreo" + CLOSED + choreo(600, 1.7, 4.4, 1.4, 1.2, 16.0),
    "3\tchoreo" + CLOSED + "bench: mode=closed n=1000 c=1 checks=failed failed=no_summary_line",
]


def run_table(lines):
    """(exit code, {(config, figure): [cells]}, stdout) of peer_table.py on LINES."""
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    try:
        p = subprocess.run([sys.executable, SCRIPT, f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    cells, config = {}, None
    for line in p.stdout.splitlines()[2:]:
        if line.startswith("bench-peer: FAILED"):
            continue
        parts = re.split(r"\s{2,}", line.strip())
        if not line.startswith(" "):
            config = parts.pop(0)
        cells[(config, parts[0])] = parts[1:]
    return p.returncode, cells, p.stdout


# ALL_OK with the floor's runs: two with figures, one that failed its checks.
WITH_FLOOR = ALL_OK + [
    "1\tfloor-own" + OPEN + floor(2500, 16.0, 48.0, 0.26, 0.40, 6.5),
    "2\tfloor-own" + OPEN + floor(2000, 20.0, 40.0, 0.30, 0.50, 7.5),
    "3\tfloor-own" + OPEN + "floor: mode=open n=5000 c=16 checks=failed failed=no_summary_line",
]


class PeerTableTest(unittest.TestCase):
    def test_peer_table_medians_and_ratios(self):
        code, cells, out = run_table(ALL_OK)
        self.assertEqual(code, 0, out)
        self.assertIn("medians over 3 round(s)", out)
        cfg = "open c=16 n=5000"
        # choreo, peer sync, peer async, choreo/sync, choreo/async
        self.assertEqual(cells[(cfg, "orders/s")], ["2000", "2500", "4500", "0.80", "0.44"])
        self.assertEqual(cells[(cfg, "p50 ms")], ["35.00", "800.00", "22.00", "0.04", "1.59"])
        self.assertEqual(cells[(cfg, "p99 ms")], ["70.00", "1260.00", "45.00", "0.06", "1.56"])
        self.assertEqual(cells[(cfg, "svc CPU s/1k")], ["0.350", "0.380", "0.200", "0.92", "1.75"])
        # the peer's nats-server CPU is seconds over the run: 1.30 s / 5000 orders
        self.assertEqual(cells[(cfg, "nats CPU s/1k")], ["0.250", "0.260", "0.125", "0.96", "2.00"])
        # the largest service's peak RSS; the peer's in KiB (27648 KiB = 27.0 MiB)
        self.assertEqual(cells[(cfg, "svc RSS MiB max")], ["19.0", "27.0", "25.0", "0.70", "0.76"])
        self.assertEqual(cells[(cfg, "runs ok")], ["3/3", "3/3", "3/3"])
        self.assertNotIn("FAILED", out)

    def test_peer_table_floor_column_only_with_floor_runs(self):
        code, _, out = run_table(ALL_OK)
        self.assertNotIn("floor", out.splitlines()[1])
        code, cells, out = run_table(WITH_FLOOR)
        self.assertEqual(code, 1, out)
        self.assertEqual(out.splitlines()[1].split()[-4:], ["choreo/async", "floor", "own", "choreo/floor"])
        cfg = "open c=16 n=5000"
        # choreo, peer sync, peer async, choreo/sync, choreo/async, floor own, choreo/floor;
        # the floor's median is the mean of its two runs with figures
        self.assertEqual(cells[(cfg, "orders/s")], ["2000", "2500", "4500", "0.80", "0.44", "2250", "0.89"])
        self.assertEqual(cells[(cfg, "p50 ms")], ["35.00", "800.00", "22.00", "0.04", "1.59", "18.00", "1.94"])
        # the floor's svc CPU is its relays', its RSS its largest relay's
        self.assertEqual(cells[(cfg, "svc CPU s/1k")], ["0.350", "0.380", "0.200", "0.92", "1.75", "0.280", "1.25"])
        self.assertEqual(cells[(cfg, "nats CPU s/1k")], ["0.250", "0.260", "0.125", "0.96", "2.00", "0.450", "0.56"])
        self.assertEqual(cells[(cfg, "svc RSS MiB max")], ["19.0", "27.0", "25.0", "0.70", "0.76", "7.0", "2.71"])
        self.assertEqual(cells[(cfg, "runs ok")], ["3/3", "3/3", "3/3", "2/3"])
        self.assertIn("bench-peer: FAILED round 3 floor-own open c=16 n=5000: no_summary_line", out)

    def test_peer_table_failed_runs_shown_and_exit_nonzero(self):
        code, cells, out = run_table(WITH_FAILURES)
        self.assertEqual(code, 1, out)
        cfg = "closed c=1 n=1000"
        # even count: the mean of the middle two; a run without figures is left out
        self.assertEqual(cells[(cfg, "orders/s")], ["550", "700", "-", "0.79", "-"])
        self.assertEqual(cells[(cfg, "p50 ms")], ["1.60", "1.00", "-", "1.60", "-"])
        self.assertEqual(cells[(cfg, "nats CPU s/1k")], ["1.100", "1.000", "-", "1.10", "-"])
        self.assertEqual(cells[(cfg, "runs ok")], ["2/3", "0/1", "0/1"])
        # the open block is the same as when it stood alone
        self.assertEqual(cells[("open c=16 n=5000", "orders/s")], ["2000", "2500", "4500", "0.80", "0.44"])
        failed = [line for line in out.splitlines() if line.startswith("bench-peer: FAILED")]
        self.assertEqual(len(failed), 3, out)
        self.assertIn("round 1 peer-sync closed c=1 n=1000: ok false", failed[0])
        self.assertIn("round 1 peer-async closed c=1 n=1000: no JSON line", failed[1])
        self.assertIn("round 3 choreo closed c=1 n=1000: no_summary_line", failed[2])

    def test_peer_table_choreo_checks_failed_is_a_failure(self):
        bad = ALL_OK[:-3] + ["3\tchoreo" + OPEN + choreo(2200, 35.0, 70.0, 0.35, 0.25, 18.0, "failed failed=stock")]
        code, cells, out = run_table(bad + ALL_OK[-2:])
        self.assertEqual(code, 1, out)
        # its figures still count in the medians: the table is the same
        self.assertEqual(cells[("open c=16 n=5000", "orders/s")], ["2000", "2500", "4500", "0.80", "0.44"])
        self.assertEqual(cells[("open c=16 n=5000", "runs ok")], ["2/3", "3/3", "3/3"])
        self.assertIn("bench-peer: FAILED round 3 choreo open c=16 n=5000: stock", out)


if __name__ == "__main__":
    unittest.main()
