"""Shared helpers for the deployment checks in tests/deploy.

Every check script renders the kustomize overlays with kubectl, works on the
rendered objects, and reports through run_checks(): each check passes, fails
(AssertionError or any exception) or is skipped (Skip). A script whose checks
were all skipped exits with SKIP_CODE, which CMake registers as the tests'
SKIP_RETURN_CODE, so ctest shows "Skipped" instead of a false pass.

Paths: the repository is two directories above this file; the Kubernetes
definitions live beside the repository in ../shared/k8s (never copied in);
the build directory (for the binaries) comes from --build-dir or
CHOREO_BUILD_DIR.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

SKIP_CODE = 77

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFINITIONS = os.path.normpath(os.path.join(REPO, "..", "shared", "k8s", "k8s-v1.32.0-definitions.json"))
OVERLAYS = ["deploy/base", "deploy/overlays/dev", "deploy/overlays/prod"]
SERVICES = {"orders": 50051, "inventory": 50052, "payment": 50053, "notifications": 50054}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
CHOREO_IMAGE = "choreo"
# What a pod's container sees besides its manifest environment: nothing of the
# developer's shell leaks into the binaries under test.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


class Skip(Exception):
    """Raised by a check that cannot run here; the message says why."""


# ---------------------------------------------------------------- harness


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--build-dir", default=os.environ.get("CHOREO_BUILD_DIR", ""),
                   help="CMake build directory holding services/<name>/choreo-<name>")
    p.add_argument("--kubectl", default=os.environ.get("KUBECTL", ""), help="kubectl to render with")
    p.add_argument("--nats-server", default=os.environ.get("CHOREO_NATS_SERVER", ""),
                   help="nats-server binary for the local runs")
    return p.parse_args(argv)


def run_checks(checks):
    """Runs (name, fn) pairs in order and exits: 1 on any failure, SKIP_CODE
    if a check was skipped (so ctest shows the suite incomplete), else 0."""
    passed = failed = skipped = 0
    for name, fn in checks:
        t0 = time.monotonic()
        try:
            fn()
        except Skip as e:
            skipped += 1
            print("SKIP %s: %s" % (name, e), flush=True)
            continue
        except Exception as e:  # a check's failure, reported with its cause
            failed += 1
            print("FAIL %s: %s" % (name, e), flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc()
            continue
        passed += 1
        print("PASS %s (%.2fs)" % (name, time.monotonic() - t0), flush=True)
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped), flush=True)
    if failed:
        sys.exit(1)
    if skipped:
        sys.exit(SKIP_CODE)
    sys.exit(0)


def require_modules():
    """python3-yaml is needed by every check; say so plainly when missing."""
    try:
        import yaml  # noqa: F401
    except ImportError:
        print("FAIL: python3-yaml is missing (scripts/deps.sh installs it); run the tests with "
              "the Debian python3 (%s is %s)" % ("this interpreter", sys.executable))
        sys.exit(1)


# ---------------------------------------------------------------- rendering

_render_cache = {}


def kubectl_path(args):
    k = args.kubectl or shutil.which("kubectl")
    if not k or not os.path.exists(k):
        raise Skip("kubectl not found (install kubectl >= 1.27 to render the kustomize overlays)")
    return k


def render(args, overlay):
    """Renders an overlay (path relative to the repo) with `kubectl kustomize`
    and returns the list of objects. Raises AssertionError on a render error."""
    import yaml

    if overlay in _render_cache:
        return _render_cache[overlay]
    k = kubectl_path(args)
    r = subprocess.run([k, "kustomize", os.path.join(REPO, overlay)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, "kubectl kustomize %s failed:\n%s" % (overlay, r.stderr.strip())
    docs = [d for d in yaml.safe_load_all(r.stdout) if d is not None]
    _render_cache[overlay] = docs
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def find(docs, kind, name):
    for d in docs:
        if d.get("kind") == kind and d["metadata"]["name"] == name:
            return d
    raise AssertionError("no %s named %s" % (kind, name))


def workloads(docs):
    return [d for d in docs if d.get("kind") in WORKLOAD_KINDS]


def pod_spec(w):
    if w["kind"] == "Pod":
        return w["spec"]
    if w["kind"] == "CronJob":
        return w["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return w["spec"]["template"]["spec"]


def pod_labels(w):
    if w["kind"] == "Pod":
        return w["metadata"].get("labels", {})
    if w["kind"] == "CronJob":
        return w["spec"]["jobTemplate"]["spec"]["template"]["metadata"].get("labels", {})
    return w["spec"]["template"]["metadata"].get("labels", {})


def matches(selector, labels):
    """A label selector (matchLabels/matchExpressions, or a plain map as in a
    Service) against a label map."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions", []):
        op, key, vals = e["operator"], e["key"], e.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and labels.get(key) in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def choreo_containers(docs):
    """(workload, container) for every container running the choreo image."""
    out = []
    for w in workloads(docs):
        for c in pod_spec(w).get("containers", []):
            if is_choreo_image(c["image"]):
                out.append((w, c))
    return out


def image_name(ref):
    """Image reference without tag or digest: [registry/]path/name."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref = ref[: len(ref) - len(last)] + last.split(":", 1)[0]
    return ref


def is_choreo_image(ref):
    """True for the project's image under any registry: .../choreo[:tag]."""
    return image_name(ref).rsplit("/", 1)[-1] == CHOREO_IMAGE


def image_tag(ref):
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(docs, w, c):
    """The environment Kubernetes gives container c of workload w: envFrom
    first, then env (which wins), with $(VAR) references expanded the way the
    kubelet does. fieldRef metadata.name becomes the first pod's name."""
    env = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            cm = find(docs, "ConfigMap", src["configMapRef"]["name"])
            for k, v in cm.get("data", {}).items():
                env[src.get("prefix", "") + k] = str(v)
        else:
            raise AssertionError("envFrom source %s not understood by the test" % src)
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), str(e["value"]))
        elif "valueFrom" in e:
            vf = e["valueFrom"]
            if "fieldRef" in vf and vf["fieldRef"]["fieldPath"] == "metadata.name":
                env[e["name"]] = w["metadata"]["name"] + ("-0" if w["kind"] == "StatefulSet" else "-pod")
            elif "fieldRef" in vf and vf["fieldRef"]["fieldPath"] == "metadata.namespace":
                env[e["name"]] = w["metadata"].get("namespace", "default")
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                env[e["name"]] = find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
            else:
                raise AssertionError("env %s: valueFrom %s not understood by the test" % (e["name"], vf))
        else:
            env[e["name"]] = ""
    return env


def port_of(hostport):
    return int(hostport.rsplit(":", 1)[1])


# ---------------------------------------------------------------- the repo's own facts


def known_env_vars():
    """Every CHOREO_* variable named as a string literal in the C sources that
    configure the binaries (common/config.c and services/**.c): what the
    binaries can read."""
    names = set()
    roots = [os.path.join(REPO, "common", "config.c")]
    for dirpath, _, files in os.walk(os.path.join(REPO, "services")):
        roots += [os.path.join(dirpath, f) for f in files if f.endswith(".c")]
    for path in roots:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                names |= set(re.findall(r'"(CHOREO_[A-Z0-9_]+)"', f.read()))
    return names


def binary_path(args, service):
    """build/services/<svc>/choreo-<svc>, or None when it is not built."""
    if not args.build_dir:
        return None
    p = os.path.join(args.build_dir, "services", service, "choreo-" + service)
    return p if os.access(p, os.X_OK) else None


def help_vars(binary):
    """The CHOREO_* variables a binary lists in --help."""
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10, env=dict(BASE_ENV))
    return set(re.findall(r"^\s+(CHOREO_[A-Z0-9_]+)\s", r.stdout + r.stderr, re.M))


def binaries_or_skip(args):
    missing = [s for s in SERVICES if not binary_path(args, s)]
    if missing:
        where = os.path.join(args.build_dir or "<no --build-dir>", "services", "<name>", "choreo-<name>")
        raise Skip("service binaries not built yet (%s missing at %s); build them and re-run"
                   % (", ".join("choreo-" + m for m in missing), where))
    return {s: binary_path(args, s) for s in SERVICES}


def nats_server_or_skip(args):
    n = args.nats_server or shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.access(n, os.X_OK):
        raise Skip("nats-server not found (Debian package nats-server)")
    return n


# ---------------------------------------------------------------- processes


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class Procs:
    """Processes started by a check, each logging to a file in tmpdir; stop()
    ends them by pid (SIGTERM, then SIGKILL) and is safe to call twice."""

    def __init__(self, tmpdir):
        self.tmpdir = tmpdir
        self.procs = {}

    def start(self, name, argv, env):
        log = open(os.path.join(self.tmpdir, name + ".log"), "wb")
        p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.procs[name] = p
        return p

    def log(self, name, tail=40):
        path = os.path.join(self.tmpdir, name + ".log")
        if not os.path.exists(path):
            return ""
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join("    " + ln for ln in lines[-tail:])

    def alive(self, name):
        return self.procs[name].poll() is None

    def stop_one(self, name, timeout=10.0):
        """SIGTERM, wait up to timeout; returns (exit code, seconds) or
        (None, timeout) if it had to be killed."""
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return (p.returncode if p else None, 0.0)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
            return (p.returncode, time.monotonic() - t0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return (None, timeout)

    def stop(self):
        for name in list(self.procs)[::-1]:
            self.stop_one(name, 5.0)


def wait_for(what, fn, timeout, interval=0.1):
    """Polls fn() until it returns a true value; AssertionError after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # not up yet
            last = e
        time.sleep(interval)
    raise AssertionError("timed out after %.0fs waiting for %s%s" % (timeout, what, (" (last: %s)" % last) if last else ""))


def http_get(port, path, timeout=1.0):
    """(status, body) of GET http://127.0.0.1:port/path."""
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def make_tmpdir(prefix):
    return tempfile.mkdtemp(prefix=prefix)


# ---------------------------------------------------------------- NATS from the manifests


def nats_statefulset(docs):
    sts = [w for w in by_kind(docs, "StatefulSet") if w["metadata"]["name"] == "nats"]
    assert sts, "no StatefulSet nats"
    return sts[0]


def nats_config_text(docs, sts):
    """The nats.conf the StatefulSet's --config argument points at, read from
    the ConfigMap volume mounted there."""
    spec = pod_spec(sts)
    c = spec["containers"][0]
    args = c.get("args", [])
    assert "--config" in args, "nats container has no --config argument"
    conf_path = args[args.index("--config") + 1]
    for m in c.get("volumeMounts", []):
        if conf_path.startswith(m["mountPath"].rstrip("/") + "/"):
            vol = [v for v in spec["volumes"] if v["name"] == m["name"]][0]
            assert "configMap" in vol, "volume %s is not a ConfigMap" % vol["name"]
            key = conf_path[len(m["mountPath"].rstrip("/")) + 1:]
            cm = find(docs, "ConfigMap", vol["configMap"]["name"])
            assert key in cm.get("data", {}), "ConfigMap %s has no key %s" % (cm["metadata"]["name"], key)
            return conf_path, cm["data"][key]
    raise AssertionError("no volume mounted at %s" % conf_path)


def start_nats(docs, procs, tmpdir, nats_bin, index=0, cluster_ports=None, ports=None):
    """Starts a local nats-server as pod `index` of the rendered StatefulSet:
    its args and its nats.conf, with only what cannot apply on this machine
    changed. The config's store_dir is moved into tmpdir (the flag would
    clash with the file); client, monitoring and cluster ports, the bind
    address, the pid file and the routes are overridden by flags, which win
    over the file. POD_NAME comes from the manifest's env (the downward API).
    ports=(client, monitor) reuses the ports of an earlier run (a restart).
    Returns {"client", "monitor", "pid_file", "name", "container"}."""
    sts = nats_statefulset(docs)
    c = pod_spec(sts)["containers"][0]
    conf_path, conf = nats_config_text(docs, sts)
    name = "%s-%d" % (sts["metadata"]["name"], index)
    store = os.path.join(tmpdir, name + "-data")
    new_conf, n = re.subn(r'(store_dir:\s*)"?[^"\s]+"?', lambda m: '%s"%s"' % (m.group(1), store), conf)
    assert n == 1, "nats.conf has %d store_dir settings, expected 1" % n
    conf_file = os.path.join(tmpdir, name + ".conf")
    with open(conf_file, "w", encoding="utf-8") as f:
        f.write(new_conf)
    client, monitor = ports or free_ports(2)
    pid_file = os.path.join(tmpdir, name + ".pid")
    argv = [nats_bin] + [conf_file if a == conf_path else a for a in c.get("args", [])]
    argv += ["-a", "127.0.0.1", "-p", str(client), "-m", str(monitor), "-P", pid_file]
    if cluster_ports:
        argv += ["--cluster", "nats://127.0.0.1:%d" % cluster_ports[index],
                 "--routes", ",".join("nats://127.0.0.1:%d" % p for i, p in enumerate(cluster_ports) if i != index)]
    env = dict(BASE_ENV)
    pod_env = container_env(docs, sts, c)
    pod_env.update({k: v.replace(sts["metadata"]["name"] + "-0", name) for k, v in pod_env.items()})
    env.update(pod_env)
    procs.start(name, argv, env)
    return {"client": client, "monitor": monitor, "pid_file": pid_file, "name": name, "container": c}


def nats_request(port, subject, payload, timeout=5.0):
    """One request-reply over the plain NATS protocol (no client library
    needed): returns the reply payload as bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        buf = b""

        def read_line():
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = s.recv(65536)
                assert chunk, "NATS closed the connection"
                buf += chunk
            line, buf = buf.split(b"\r\n", 1)
            return line

        assert read_line().startswith(b"INFO "), "no INFO from NATS"
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1}\r\nSUB _INBOX.deploycheck 1\r\n'
                  + b"PUB %s _INBOX.deploycheck %d\r\n%s\r\nPING\r\n" % (subject.encode(), len(payload), payload))
        while True:
            line = read_line()
            if line.startswith(b"-ERR"):
                raise AssertionError("NATS: %s" % line.decode())
            if line.startswith(b"MSG "):
                size = int(line.split()[-1])
                while len(buf) < size + 2:
                    chunk = s.recv(65536)
                    assert chunk, "NATS closed the connection"
                    buf += chunk
                return buf[:size]
            if line == b"PING":
                s.sendall(b"PONG\r\n")
    finally:
        s.close()


def probe_paths(container):
    """{probe kind: httpGet path} for the container's HTTP probes."""
    out = {}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = container.get(kind)
        if p and "httpGet" in p:
            out[kind] = p["httpGet"]["path"]
    return out
