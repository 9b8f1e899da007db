#!/usr/bin/env python3
"""The dev overlay's configuration really starts the system: runs NATS from
the rendered StatefulSet (its nats.conf and args) and each service
Deployment's container command with the rendered environment (ConfigMap and
env), with only the NATS address pointed at the local server and the listen
addresses moved to free local ports. Then, as the kubelet's probes would:

  - every service answers grpc.health.v1.Health/Check with SERVING;
  - with NATS stopped, health turns NOT_SERVING (readiness drops) and the
    process stays up; with NATS back on the same port and store, SERVING
    again (no restart needed);
  - on SIGTERM each service exits 0 within terminationGracePeriodSeconds.

Skipped while the service binaries are not built (pass --build-dir)."""

import os
import shutil

import deploylib as dl

ARGS = dl.parse_args()
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"


def health(channel):
    """HealthCheckRequest{service: ""} is empty; the reply is the raw
    HealthCheckResponse bytes (field 1 status: 1 SERVING, 2 NOT_SERVING)."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return check(b"", timeout=1.0)


def smoke():
    try:
        import grpc
    except ImportError:
        raise AssertionError("python3-grpcio is missing (scripts/deps.sh installs it)")
    nats_bin = dl.nats_server_or_skip(ARGS)
    present = [s for s in dl.SERVICES if dl.binary_path(ARGS, s)]
    missing = [s for s in dl.SERVICES if s not in present]
    if not present:
        dl.binaries_or_skip(ARGS)
    docs = dl.render(ARGS, "deploy/overlays/dev")
    tmp = dl.make_tmpdir("choreo-smoke-")
    procs = dl.Procs(tmp)
    channels = {}
    try:
        nats = dl.start_nats(docs, procs, tmp, nats_bin)
        ready = dl.probe_paths(nats["container"])["readinessProbe"]
        dl.wait_for("NATS readiness %s" % ready, lambda: dl.http_get(nats["monitor"], ready)[0] == 200, 10)
        url = "nats://127.0.0.1:%d" % nats["client"]

        grace = {}
        for w, c in dl.choreo_containers(docs):
            svc = w["metadata"]["name"]
            if svc not in present:
                continue
            env = dict(dl.BASE_ENV)
            env.update(dl.container_env(docs, w, c))
            assert env["CHOREO_NATS_URL"].startswith("nats://"), env["CHOREO_NATS_URL"]
            env["CHOREO_NATS_URL"] = url
            env["CHOREO_LISTEN_ADDR"] = "127.0.0.1:%d" % dl.free_ports(1)[0]
            cmd = list(c["command"]) + list(c.get("args", []))
            assert os.path.basename(cmd[0]) == "choreo-" + svc, "%s runs %s" % (svc, cmd)
            cmd[0] = dl.binary_path(ARGS, svc)
            procs.start(svc, cmd, env)
            channels[svc] = grpc.insecure_channel(env["CHOREO_LISTEN_ADDR"])
            grace[svc] = dl.pod_spec(w).get("terminationGracePeriodSeconds", 30)

        # Waits stay short enough (15 + 10 + 15 s worst case) that a hung
        # service fails the check inside ctest's 60 s timeout, so the finally
        # below still stops every process.
        def all_are(status, what, timeout):
            def ok():
                for svc, ch in channels.items():
                    assert procs.alive(svc), "%s exited (code %s):\n%s" % (svc, procs.procs[svc].returncode, procs.log(svc))
                    if health(ch) != status:
                        return False
                return True
            try:
                dl.wait_for(what, ok, timeout, 0.2)
            except AssertionError as e:
                raise AssertionError("%s\n%s" % (e, "\n".join("  --- %s\n%s" % (s, procs.log(s, 15)) for s in channels)))

        all_are(SERVING, "every service SERVING", 15)
        print("     SERVING: %s" % ", ".join(channels))

        code, _ = procs.stop_one(nats["name"], 10)
        all_are(NOT_SERVING, "NOT_SERVING while NATS is down", 10)
        print("     NOT_SERVING with NATS stopped, processes still up")
        nats = dl.start_nats(docs, procs, tmp, nats_bin, ports=(nats["client"], nats["monitor"]))
        all_are(SERVING, "SERVING again after NATS restarts", 15)
        print("     SERVING again after NATS came back")

        for ch in channels.values():
            ch.close()
        for svc in channels:
            code, took = procs.stop_one(svc, min(grace[svc], 15))
            assert code is not None, "%s ignored SIGTERM for %ds (terminationGracePeriodSeconds %d):\n%s" % (
                svc, min(grace[svc], 15), grace[svc], procs.log(svc))
            assert code == 0, "%s exited %d on SIGTERM:\n%s" % (svc, code, procs.log(svc, 10))
            print("     %s stopped on SIGTERM in %.2fs" % (svc, took))
    finally:
        for ch in channels.values():
            ch.close()
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if missing:
        raise dl.Skip("ran %s; %s not built yet, so the system is not complete"
                      % (", ".join(present), ", ".join("choreo-" + m for m in missing)))


if __name__ == "__main__":
    dl.require_modules()
    dl.run_checks([("dev overlay starts NATS and the services; health follows NATS", smoke)])
