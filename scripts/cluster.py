#!/usr/bin/env python3
"""The production topology on this machine: a three-node NATS JetStream
cluster on loopback and N replicas of every service, in the background.

  scripts/cluster.py up [--replicas N]   start what is not running (N: 2, as the prod overlay)
  scripts/cluster.py status              one line per process: name, pid, address, state
  scripts/cluster.py kill NAME           SIGKILL one process (a crash): nats-1, payment-0, ...
  scripts/cluster.py stop NAME           SIGTERM one process and wait for it to exit
  scripts/cluster.py start NAME          start one stopped process again (same ports, same store)
  scripts/cluster.py env                 CHOREO_NATS_URL and the services' addresses, as shell lines
  scripts/cluster.py down [--keep-data]  stop everything (SIGTERM, then SIGKILL) and delete the store

Nothing here is a hand copy of the deployment: the prod overlay is rendered
with `kubectl kustomize deploy/overlays/prod`; each nats-server runs the
StatefulSet's arguments and its rendered nats.conf (cluster name, JetStream
limits, lame duck), and each service the Deployment's command and its
rendered environment (CHOREO_STREAM_REPLICAS=3, the timeouts, the log level).
Only what cannot apply to one machine is changed, the way the deploy checks
do it (tests/deploy/deploylib.py): ports and routes on 127.0.0.1, the store
under .data/cluster, CHOREO_NATS_URL as the list of the three local servers
(the same comma-separated form the overlay uses), one listen address per
replica.

Ports (fixed, so that grpcurl and the choreo CLI find them): nats-I serves
clients on 14222+I, monitoring on 18222+I, routes on 16222+I; replica K of a
service listens on its usual port + 100 * (K + 1): orders-0 on 50151,
orders-1 on 50251, inventory-0 on 50152, ... Logs and state go to
.run/cluster/, JetStream's store to .data/cluster/. CHOREO_BUILD_DIR (build)
says where the binaries are; KUBECTL and CHOREO_NATS_SERVER name the tools
when they are not on PATH. Needs python3-yaml and kubectl, as the deploy
checks do (scripts/deps.sh installs the first), and the choreo CLI (built with
the services) for the health checks."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "deploy"))
import deploylib as dl  # noqa: E402  (the deploy checks' renderer, shared)

RUN_DIR = os.path.join(REPO, ".run", "cluster")
DATA_DIR = os.path.join(REPO, ".data", "cluster")
STATE = os.path.join(RUN_DIR, "state.json")
NODES = 3
NATS_CLIENT, NATS_MONITOR, NATS_ROUTE = 14222, 18222, 16222
WAIT_S = 60


def die(msg):
    sys.exit("cluster: " + msg)


def alive(pid):
    """True while pid runs (a zombie or a reused pid of another program is not ours)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def load():
    if not os.path.exists(STATE):
        return None
    with open(STATE) as f:
        return json.load(f)


def save(state):
    os.makedirs(RUN_DIR, exist_ok=True)
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, STATE)


class Recorder:
    """What deploylib.start_nats hands its argv and environment to: kept to
    be started here, detached, and again after a kill."""

    def __init__(self):
        self.started = {}

    def start(self, name, argv, env):
        self.started[name] = (argv, env)


def plan(args):
    """Renders the prod overlay and returns the processes to run, in start
    order: nats-0..2, then replica 0 of every service, then replica 1, ..."""
    docs = dl.render(args, "deploy/overlays/prod")
    nats_bin = dl.nats_server_or_skip(args)
    os.makedirs(DATA_DIR, exist_ok=True)
    routes = [NATS_ROUTE + i for i in range(NODES)]
    rec = Recorder()
    procs = []
    for i in range(NODES):
        n = dl.start_nats(docs, rec, DATA_DIR, nats_bin, i, routes, ports=(NATS_CLIENT + i, NATS_MONITOR + i))
        argv, env = rec.started[n["name"]]
        ready = dl.probe_paths(n["container"]).get("readinessProbe", "/healthz")
        procs.append({"name": n["name"], "kind": "nats", "argv": argv, "env": env, "port": n["client"],
                      "monitor": n["monitor"], "ready": ready})
    urls = ",".join("nats://127.0.0.1:%d" % (NATS_CLIENT + i) for i in range(NODES))
    bins = dl.binaries_or_skip(args)
    containers = {w["metadata"]["name"]: (w, c) for w, c in dl.choreo_containers(docs)}
    for k in range(args.replicas):
        for svc, port in dl.SERVICES.items():
            w, c = containers[svc]
            env = dict(dl.BASE_ENV)
            env.update(dl.container_env(docs, w, c))
            assert len(env["CHOREO_NATS_URL"].split(",")) == NODES, env["CHOREO_NATS_URL"]
            env["CHOREO_NATS_URL"] = urls
            listen = port + 100 * (k + 1)
            env["CHOREO_LISTEN_ADDR"] = "127.0.0.1:%d" % listen
            cmd = list(c["command"]) + list(c.get("args", []))
            cmd[0] = bins[svc]
            procs.append({"name": "%s-%d" % (svc, k), "kind": "service", "argv": cmd, "env": env, "port": listen})
    return procs


def spawn(p):
    """Starts p detached (its own session: it outlives this script), its
    output appended to .run/cluster/<name>.log."""
    log = open(os.path.join(RUN_DIR, p["name"] + ".log"), "ab")
    child = subprocess.Popen(p["argv"], env=p["env"], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=RUN_DIR)
    log.close()
    p["pid"] = child.pid


def nats_ready(p):
    status, _ = dl.http_get(p["monitor"], p["ready"])
    return status == 200


def meta_leader(state):
    """The JetStream meta leader's server name once all three see one."""
    leaders = set()
    for p in state["procs"]:
        if p["kind"] == "nats" and alive(p.get("pid", 0)):
            _, body = dl.http_get(p["monitor"], "/jsz")
            meta = json.loads(body).get("meta_cluster", {})
            if meta.get("cluster_size") != NODES or not meta.get("leader"):
                return None
            leaders.add(meta["leader"])
    return leaders.pop() if len(leaders) == 1 else None


def health(p, build_dir):
    """grpc.health.v1 of a service replica, asked with the choreo CLI:
    SERVING, NOT_SERVING, or why not."""
    cli = os.path.join(build_dir, "tools", "choreo", "choreo")
    if not os.access(cli, os.X_OK):
        return "unknown (the choreo CLI is not built: %s)" % cli
    r = subprocess.run([cli, "health", "127.0.0.1:%d" % p["port"]], capture_output=True, text=True, timeout=10)
    out = (r.stdout.strip() or r.stderr.strip()).splitlines()
    return out[0][:60] if out else "exit %d" % r.returncode


def wait(what, fn, p):
    try:
        dl.wait_for(what, fn, WAIT_S, 0.2)
    except AssertionError as e:
        die("%s; its log: %s" % (e, os.path.join(RUN_DIR, p["name"] + ".log")))


def start_one(state, p, build_dir):
    if alive(p.get("pid", 0)):
        return False
    spawn(p)
    save(state)
    if p["kind"] == "nats":
        wait("%s ready (%s)" % (p["name"], p["ready"]), lambda: nats_ready(p), p)
    else:
        wait("%s SERVING" % p["name"], lambda: health(p, build_dir) == "SERVING", p)
    return True


def cmd_up(args):
    state = load()
    if state and state["replicas"] != args.replicas and any(alive(p.get("pid", 0)) for p in state["procs"]):
        die("running with %d replicas per service; `down` first to change that" % state["replicas"])
    if not state or not any(alive(p.get("pid", 0)) for p in state["procs"]):
        try:
            state = {"replicas": args.replicas, "procs": plan(args)}
        except dl.Skip as e:
            die(str(e))
    os.makedirs(RUN_DIR, exist_ok=True)
    save(state)
    nats = [p for p in state["procs"] if p["kind"] == "nats"]
    for p in nats:  # all three first: a node is ready only once it reaches the others
        if not alive(p.get("pid", 0)):
            spawn(p)
    save(state)
    for p in nats:
        wait("%s ready (%s)" % (p["name"], p["ready"]), lambda p=p: nats_ready(p), p)
    wait("a JetStream meta leader seen by all three nodes", lambda: meta_leader(state), nats[0])
    for p in state["procs"]:
        if p["kind"] == "service":
            start_one(state, p, args.build_dir)
    cmd_status(args)


def find(state, name):
    for p in state["procs"]:
        if p["name"] == name:
            return p
    die("no process %s (names: %s)" % (name, ", ".join(p["name"] for p in state["procs"])))


def signal_one(p, sig, wait_s):
    """Sends sig and waits up to wait_s for the exit; SIGKILL after that.
    Returns the seconds it took."""
    pid = p.get("pid", 0)
    t0 = time.monotonic()
    if not alive(pid):
        return 0.0
    os.kill(pid, sig)
    while alive(pid) and time.monotonic() - t0 < wait_s:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
    return time.monotonic() - t0


def cmd_kill(args, sig=signal.SIGKILL, wait_s=10):
    state = load() or die("not up")
    p = find(state, args.name)
    if not alive(p.get("pid", 0)):
        die("%s is not running" % p["name"])
    took = signal_one(p, sig, wait_s)
    print("%s (pid %d) %s after %.2fs" % (p["name"], p["pid"], "killed" if sig == signal.SIGKILL else "stopped", took))


def cmd_start(args):
    state = load() or die("not up")
    p = find(state, args.name)
    t0 = time.monotonic()
    if not start_one(state, p, args.build_dir):
        die("%s is running (pid %d)" % (p["name"], p["pid"]))
    print("%s (pid %d) ready after %.2fs" % (p["name"], p["pid"], time.monotonic() - t0))


def cmd_status(args):
    state = load()
    if not state:
        print("cluster: not up")
        return
    leader = None
    try:
        leader = meta_leader(state)
    except Exception:
        pass
    for p in state["procs"]:
        up = alive(p.get("pid", 0))
        if p["kind"] == "nats":
            what = "ready" if up and _quiet(nats_ready, p) else "-"
            if up and leader == p["name"]:
                what += " (meta leader)"
        else:
            what = health(p, args.build_dir) if up else "-"
        print("%-16s %-8s 127.0.0.1:%-6d %-8s %s" % (p["name"], p.get("pid", "-") if up else "-", p["port"],
                                                     "running" if up else "stopped", what))


def _quiet(fn, p):
    try:
        return fn(p)
    except Exception:
        return False


def cmd_env(args):
    """Shell lines for the choreo CLI and the benchmark tools: eval them. The
    CLI's CHOREO_<SERVICE>_ADDR point at replica 0; the others follow."""
    state = load() or die("not up")
    print("export CHOREO_NATS_URL=%s" % ",".join("nats://127.0.0.1:%d" % p["port"]
                                                 for p in state["procs"] if p["kind"] == "nats"))
    for p in state["procs"]:
        if p["kind"] == "service":
            svc, k = p["name"].rsplit("-", 1)
            line = "export CHOREO_%s_ADDR=127.0.0.1:%d" % (svc.upper(), p["port"])
            print(line if k == "0" else "# replica %s: %s" % (k, line[len("export "):]))


def cmd_down(args):
    state = load()
    if state:
        for p in reversed(state["procs"]):  # services first, then the nodes
            if alive(p.get("pid", 0)):
                took = signal_one(p, signal.SIGTERM, 10)
                print("%s stopped (%.2fs)" % (p["name"], took))
        os.remove(STATE)
    if not args.keep_data:
        import shutil

        shutil.rmtree(DATA_DIR, ignore_errors=True)


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `status | head` ends quietly
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("CHOREO_BUILD_DIR", os.path.join(REPO, "build")))
    ap.add_argument("--kubectl", default=os.environ.get("KUBECTL", ""))
    ap.add_argument("--nats-server", default=os.environ.get("CHOREO_NATS_SERVER", ""))
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--replicas", type=int, default=2)
    sub.add_parser("status")
    sub.add_parser("env")
    for name in ("kill", "stop", "start"):
        sub.add_parser(name).add_argument("name")
    down = sub.add_parser("down")
    down.add_argument("--keep-data", action="store_true")
    args = ap.parse_args()
    if args.cmd == "up" and not 1 <= args.replicas <= 9:
        die("--replicas: %d is not 1..9 (the ports allow 9)" % args.replicas)
    args.build_dir = os.path.abspath(args.build_dir)
    {"up": cmd_up, "status": cmd_status, "env": cmd_env, "start": cmd_start, "down": cmd_down,
     "kill": cmd_kill, "stop": lambda a: cmd_kill(a, signal.SIGTERM, 35)}[args.cmd](args)


if __name__ == "__main__":
    main()
