#!/usr/bin/env python3
"""pprof_top.py: the top functions of a Go CPU profile, without a Go toolchain.

nats-server serves /debug/pprof/ on the port given to --profile; its CPU profile
(gzipped protobuf, perftools profile.proto) names every function even though the
Debian binary is stripped. This prints the flat and cumulative shares of the
heaviest functions, as `go tool pprof -top` would.

usage: pprof_top.py PROFILE [N]
"""
import collections
import gzip
import sys


def varint(b, i):
    value = shift = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def fields(b):
    """(field number, value) of each field of one protobuf message."""
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        wire = key & 7
        if wire == 0:
            value, i = varint(b, i)
        elif wire == 2:
            n, i = varint(b, i)
            value, i = b[i:i + n], i + n
        elif wire == 1:
            value, i = b[i:i + 8], i + 8
        elif wire == 5:
            value, i = b[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type %d" % wire)
        yield key >> 3, value


def ints(value):
    """A repeated integer field: packed bytes or one varint."""
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = varint(value, i)
        out.append(v)
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    strings, samples, locations, functions = [], [], {}, {}
    for f, v in fields(gzip.open(sys.argv[1]).read()):
        if f == 2:  # Sample: location ids (leaf first), values
            locs, values = [], []
            for f2, v2 in fields(v):
                if f2 == 1:
                    locs += ints(v2)
                elif f2 == 2:
                    values += ints(v2)
            samples.append((locs, values[-1] if values else 1))
        elif f == 4:  # Location: id, lines (function ids, inlined first)
            lid, funcs = None, []
            for f2, v2 in fields(v):
                if f2 == 1:
                    lid = v2
                elif f2 == 4:
                    funcs += [v3 for f3, v3 in fields(v2) if f3 == 1]
            locations[lid] = funcs
        elif f == 5:  # Function: id, name (string index)
            d = dict(fields(v))
            functions[d.get(1)] = d.get(2, 0)
        elif f == 6:
            strings.append(v.decode("utf-8", "replace"))

    def names(lid):
        return [strings[functions.get(fid, 0)] for fid in locations.get(lid, [])]

    flat, cum, total = collections.Counter(), collections.Counter(), 0
    for locs, weight in samples:
        total += weight
        if locs and names(locs[0]):
            flat[names(locs[0])[0]] += weight
        for name in {n for lid in locs for n in names(lid)}:
            cum[name] += weight
    if total == 0:
        sys.exit("no samples: was the server busy while it was profiled?")
    print("%d samples, %.2f s of CPU" % (len(samples), total / 1e9))
    for title, counter in (("flat", flat), ("cumulative", cum)):
        print("--- %s" % title)
        for name, weight in counter.most_common(top):
            print("%5.1f%%  %s" % (100.0 * weight / total, name))


if __name__ == "__main__":
    main()
