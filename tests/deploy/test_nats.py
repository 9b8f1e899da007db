#!/usr/bin/env python3
"""Runs the NATS StatefulSet of each overlay as local nats-server processes,
with the rendered nats.conf and container args, and checks what the kubelet
would: the startup, readiness and liveness probe paths answer 200, and the
preStop command (lame-duck signal through the pid file) stops the server.
For prod, three servers form the JetStream cluster through their routes and
accept a stream replicated three ways, as CHOREO_STREAM_REPLICAS=3 needs.

Run with Debian's nats-server (2.9.10); the manifests pin a 2.10 image. The
options used here exist in both."""

import json
import shutil

import deploylib as dl

ARGS = dl.parse_args()


def probe_ok(port, paths):
    for path in paths:
        status, _ = dl.http_get(port, path)
        if status != 200:
            return False
    return True


def lame_duck_stop(procs, n):
    """Runs the manifest's preStop exec command, pointed at this server's pid
    file, and waits for the server to exit."""
    import subprocess

    cmd = n["container"]["lifecycle"]["preStop"]["exec"]["command"]
    nats_bin = dl.nats_server_or_skip(ARGS)
    argv = [nats_bin if a == "nats-server" else a.replace("/var/run/nats/nats.pid", n["pid_file"]) for a in cmd]
    assert argv[0] == nats_bin, "preStop does not run nats-server: %s" % cmd
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, "preStop %s failed: %s" % (argv, r.stderr.strip())
    p = procs.procs[n["name"]]
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        raise AssertionError("%s still running 20s after the lame-duck signal" % n["name"])


def check_single(overlay):
    def check():
        nats_bin = dl.nats_server_or_skip(ARGS)
        docs = dl.render(ARGS, overlay)
        tmp = dl.make_tmpdir("choreo-nats-")
        procs = dl.Procs(tmp)
        try:
            n = dl.start_nats(docs, procs, tmp, nats_bin)
            paths = list(dl.probe_paths(n["container"]).values())
            assert len(paths) == 3, "expected startup, readiness and liveness HTTP probes: %s" % paths
            try:
                dl.wait_for("NATS probes %s" % paths, lambda: probe_ok(n["monitor"], paths), 10)
            except AssertionError:
                raise AssertionError("probes failed; nats-server log:\n%s" % procs.log(n["name"]))
            lame_duck_stop(procs, n)
        finally:
            procs.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    return check


def check_cluster():
    nats_bin = dl.nats_server_or_skip(ARGS)
    docs = dl.render(ARGS, "deploy/overlays/prod")
    sts = dl.nats_statefulset(docs)
    replicas = sts["spec"]["replicas"]
    tmp = dl.make_tmpdir("choreo-nats-cluster-")
    procs = dl.Procs(tmp)
    try:
        cluster_ports = dl.free_ports(replicas)
        servers = [dl.start_nats(docs, procs, tmp, nats_bin, i, cluster_ports) for i in range(replicas)]
        paths = list(dl.probe_paths(servers[0]["container"]).values())

        def formed():
            for n in servers:
                if not probe_ok(n["monitor"], paths):
                    return False
                _, body = dl.http_get(n["monitor"], "/jsz")
                meta = json.loads(body).get("meta_cluster", {})
                if meta.get("cluster_size") != replicas or not meta.get("leader"):
                    return False
            return True

        try:
            dl.wait_for("a %d-node JetStream cluster with a meta leader" % replicas, formed, 20, 0.25)
        except AssertionError as e:
            raise AssertionError("%s\n%s" % (e, "\n".join(procs.log(n["name"], 15) for n in servers)))
        _, body = dl.http_get(servers[0]["monitor"], "/varz")
        varz = json.loads(body)
        assert varz["server_name"] == servers[0]["name"], "server_name %s, want the pod name" % varz["server_name"]
        assert varz["cluster"]["name"] == "choreo", "cluster name %s" % varz["cluster"]
        env = dl.container_env(docs, *dl.choreo_containers(docs)[0])
        want = int(env["CHOREO_STREAM_REPLICAS"])
        cfg = json.dumps({"name": "DEPLOYCHECK", "subjects": ["deploycheck.>"], "storage": "file",
                          "num_replicas": want, "retention": "limits"}).encode()

        def create():
            reply = json.loads(dl.nats_request(servers[1]["client"], "$JS.API.STREAM.CREATE.DEPLOYCHECK", cfg))
            if "error" in reply:
                raise AssertionError(reply["error"])
            return reply

        reply = dl.wait_for("an R%d stream" % want, create, 15, 0.5)
        assert reply["config"]["num_replicas"] == want, reply
        assert len(reply["cluster"].get("replicas", [])) == want - 1, "stream replicas: %s" % reply["cluster"]
        for n in servers:
            lame_duck_stop(procs, n)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    dl.require_modules()
    dl.run_checks([
        ("base NATS: probes answer, preStop lame duck stops it", check_single("deploy/base")),
        ("dev NATS: probes answer, preStop lame duck stops it", check_single("deploy/overlays/dev")),
        ("prod NATS: 3-node cluster forms, R3 stream, lame duck", check_cluster),
    ])
