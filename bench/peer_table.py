#!/usr/bin/env python3
"""peer_table.py: the table `make bench-peer` prints, from its results file.

Each line of the results file is one run, tab-separated:

    ROUND  IMPL  MODE  C  N  SUMMARY

IMPL is `choreo`, `peer-sync`, `peer-async` or `floor-own`; SUMMARY is the
run's own last line: choreo-bench's `bench: key=value ...`, the peer driver's
JSON object or choreo-bus-floor's `floor: key=value ...`. Lines starting with
`#` are comments. A run without a summary is recorded as `bench: checks=failed
...`, `floor: checks=failed ...` or `{"ok": false, ...}`: failed, with no
figures.

Per configuration (MODE, C, N) it prints the median over the rounds of each
figure for choreo, the peer with PUBLISH=sync and with PUBLISH=async, and the
ratios choreo / peer. When the file has floor-own runs (choreo-bus-floor
--pattern own: choreo's messages with no service behind them), their medians
and the ratio choreo / floor follow; for the floor, "svc CPU" is its relays'
CPU and "svc RSS" its largest relay's peak. The median of an even count is the mean of the middle
two; runs without figures are left out of the medians but not of `runs ok`.
Exits 1 when any run failed (choreo checks not ok, peer ok false), 0 otherwise.

usage: peer_table.py RESULTS
"""
import json
import statistics
import sys

IMPLS = ("choreo", "peer-sync", "peer-async", "floor-own")
# (key, label, decimals); lower is better for every figure but orders/s.
FIGURES = (
    ("orders_per_s", "orders/s", 0),
    ("p50_ms", "p50 ms", 2),
    ("p99_ms", "p99 ms", 2),
    ("cpu_svc", "svc CPU s/1k", 3),
    ("cpu_nats", "nats CPU s/1k", 3),
    ("rss_mib", "svc RSS MiB max", 1),
)
SERVICES = ("orders", "inventory", "payment", "notifications")


def parse_kv(line, cpu_key, rss_keys):
    """Figures of a `bench:` or `floor:` key=value line; ok only with checks=ok."""
    kv = dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
    run = {"ok": kv.get("checks") == "ok", "why": kv.get("failed", "checks " + kv.get("checks", "missing"))}
    try:
        run.update(
            orders_per_s=float(kv["orders_per_s"]),
            p50_ms=float(kv["p50_ms"]),
            p99_ms=float(kv["p99_ms"]),
            cpu_svc=float(kv[cpu_key]),
            cpu_nats=float(kv["cpu_s_per_1k_nats"]),
            rss_mib=max(float(kv[k]) for k in rss_keys),
        )
    except (KeyError, ValueError):
        pass  # no figures: a failed run, counted in `runs ok` only
    return run


def parse_choreo(line):
    return parse_kv(line, "cpu_s_per_1k", ["rss_mb_" + s for s in SERVICES])


def parse_floor(line):
    return parse_kv(line, "cpu_s_per_1k_relays", ["rss_mb_relay_max"])


def parse_peer(line):
    """Figures of the peer driver's JSON line; ok only with "ok": true."""
    try:
        r = json.loads(line)
    except ValueError:
        return {"ok": False, "why": "not a JSON line"}
    run = {"ok": r.get("ok") is True, "why": "; ".join(r.get("problems", [])) or r.get("error", "ok false")}
    try:
        run.update(
            orders_per_s=float(r["orders_per_s"]),
            p50_ms=float(r["lat_ms"]["p50"]),
            p99_ms=float(r["lat_ms"]["p99"]),
            cpu_svc=float(r["cpu_s_per_1000"]),
            cpu_nats=float(r["nats_server"]["cpu_s"]) / r["n"] * 1000,
            rss_mib=max(r["rss_peak_kb"].values()) / 1024,
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return run


def read_runs(lines):
    """[(round, impl, (mode, c, n), run)] from the results file's lines."""
    runs = []
    for raw in lines:
        raw = raw.rstrip("\n")
        if not raw.strip() or raw.startswith("#"):
            continue
        rnd, impl, mode, c, n, summary = raw.split("\t", 5)
        if impl not in IMPLS:
            raise ValueError(f"unknown impl '{impl}' in: {raw}")
        if summary.startswith("bench:"):
            run = parse_choreo(summary)
        elif summary.startswith("floor:"):
            run = parse_floor(summary)
        else:
            run = parse_peer(summary)
        runs.append((rnd, impl, (mode, int(c), int(n)), run))
    return runs


HEAD = ("config", "figure", "choreo", "peer sync", "peer async", "choreo/sync", "choreo/async")
WIDTHS = (22, 16, 10, 12, 12, 13, 14)
FLOOR_HEAD = ("floor own", "choreo/floor")
FLOOR_WIDTHS = (12, 14)


def row(cells):
    """One line of the table: the two labels left-aligned, the figures right-aligned."""
    widths = WIDTHS + FLOOR_WIDTHS
    return "".join(
        str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()


def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"


def table(runs):
    """The printed table, one block of rows per configuration."""
    configs = list(dict.fromkeys(cfg for _, _, cfg, _ in runs))
    rounds = len(set(rnd for rnd, _, _, _ in runs))
    floor = any(impl == "floor-own" for _, impl, _, _ in runs)
    impls = IMPLS if floor else IMPLS[:3]
    head = HEAD + FLOOR_HEAD if floor else HEAD
    out = [f"bench-peer: medians over {rounds} round(s); ratio = choreo / peer", row(head)]
    for mode, c, n in configs:
        label = f"{mode} c={c} n={n}"
        mine = {i: [r for _, im, cfg, r in runs if im == i and cfg == (mode, c, n)] for i in IMPLS}
        for key, name, dec in FIGURES:
            med = {}
            for i in IMPLS:
                vals = [r[key] for r in mine[i] if key in r]
                med[i] = statistics.median(vals) if vals else None
            cells = ["-" if med[i] is None else f"{med[i]:.{dec}f}" for i in impls]
            ratios = [ratio(med["choreo"], med[p]) for p in ("peer-sync", "peer-async")]
            if floor:  # its figure after the peer's ratios, then its own ratio
                ratios += [cells.pop(), ratio(med["choreo"], med["floor-own"])]
            out.append(row([label, name] + cells + ratios))
            label = ""
        oks = [f"{sum(r['ok'] for r in mine[i])}/{len(mine[i])}" for i in impls]
        if floor:
            oks = oks[:3] + ["", ""] + oks[3:]
        out.append(row(["", "runs ok"] + oks))
    return "\n".join(out)


def failures(runs):
    return [f"round {rnd} {impl} {m} c={c} n={n}: {r['why']}" for rnd, impl, (m, c, n), r in runs if not r["ok"]]


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        runs = read_runs(f)
    if not runs:
        print(f"peer_table.py: no runs in {argv[1]}", file=sys.stderr)
        return 1
    print(table(runs))
    failed = failures(runs)
    for line in failed:
        print("bench-peer: FAILED " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
