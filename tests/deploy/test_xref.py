#!/usr/bin/env python3
"""Cross-reference checks on the rendered overlays: what one object names,
another must provide. Selectors match pod labels; Service targetPorts and
probe ports exist on the containers; referenced ConfigMaps and
ServiceAccounts exist; the ConfigMap's keys are variables the binaries read;
NATS URLs, routes and replica counts agree; the security and resource rules
hold on every container; prod has its PodDisruptionBudgets, NetworkPolicies
and pinned images; the Dockerfile installs what the manifests run."""

import os
import re

import deploylib as dl

ARGS = dl.parse_args()
OVERLAYS = dl.OVERLAYS
PORT_FIELDS = ("startupProbe", "readinessProbe", "livenessProbe")


def container_port_ok(container, port):
    """A probe/targetPort value (name or number) is declared by the container."""
    for p in container.get("ports", []):
        if (isinstance(port, int) and p["containerPort"] == port) or p.get("name") == port:
            return True
    return False


def each_overlay(fn):
    def check():
        problems = []
        for o in OVERLAYS:
            docs = dl.render(ARGS, o)
            problems += ["%s: %s" % (o, p) for p in fn(docs, o)]
        assert not problems, "\n  " + "\n  ".join(problems)
    return check


# ------------------------------------------------------------ selectors and ports


def selectors(docs, overlay):
    out = []
    for w in dl.workloads(docs):
        sel = w["spec"].get("selector")
        name = "%s/%s" % (w["kind"], w["metadata"]["name"])
        if w["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            if not sel or not sel.get("matchLabels"):
                out.append("%s has no selector.matchLabels" % name)
            elif not dl.matches(sel, dl.pod_labels(w)):
                out.append("%s selector %s does not match its pod labels %s" % (name, sel, dl.pod_labels(w)))
        if w["kind"] == "StatefulSet":
            svc = [s for s in dl.by_kind(docs, "Service") if s["metadata"]["name"] == w["spec"]["serviceName"]]
            if not svc:
                out.append("%s serviceName %s is not a Service" % (name, w["spec"]["serviceName"]))
            elif svc[0]["spec"].get("clusterIP") != "None" or not svc[0]["spec"].get("publishNotReadyAddresses"):
                out.append("%s: governing Service %s must be headless with publishNotReadyAddresses"
                           % (name, svc[0]["metadata"]["name"]))
    return out


def services(docs, overlay):
    out = []
    for s in dl.by_kind(docs, "Service"):
        sel = s["spec"].get("selector")
        name = s["metadata"]["name"]
        pods = [w for w in dl.workloads(docs) if dl.matches(sel, dl.pod_labels(w))]
        if not pods:
            out.append("Service %s selects no workload (selector %s)" % (name, sel))
            continue
        for port in s["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for w in pods:
                if not any(container_port_ok(c, target) for c in dl.pod_spec(w)["containers"]):
                    out.append("Service %s port %s: targetPort %r is not a port of %s"
                               % (name, port.get("name"), target, w["metadata"]["name"]))
        if name in dl.SERVICES:
            names = [p.get("name") for p in s["spec"]["ports"]]
            if names != ["grpc"] or s["spec"]["ports"][0]["port"] != dl.SERVICES[name]:
                out.append("Service %s must have one port named grpc on %d, has %s"
                           % (name, dl.SERVICES[name], s["spec"]["ports"]))
    return out


def probes(docs, overlay):
    out = []
    for w in dl.workloads(docs):
        for c in dl.pod_spec(w)["containers"]:
            where = "%s/%s container %s" % (w["kind"], w["metadata"]["name"], c["name"])
            for kind in PORT_FIELDS:
                p = c.get(kind)
                if not p:
                    if kind != "startupProbe":
                        out.append("%s has no %s" % (where, kind))
                    continue
                for action in ("grpc", "httpGet", "tcpSocket"):
                    if action in p:
                        port = p[action]["port"]
                        if action == "grpc" and not isinstance(port, int):
                            out.append("%s %s: grpc port must be a number, is %r" % (where, kind, port))
                        if not container_port_ok(c, port):
                            out.append("%s %s: port %r is not a container port" % (where, kind, port))
            if dl.is_choreo_image(c["image"]):
                env = dl.container_env(docs, w, c)
                listen = env.get("CHOREO_LISTEN_ADDR", "0.0.0.0:%d" % dl.SERVICES.get(w["metadata"]["name"], 0))
                for kind in ("readinessProbe", "livenessProbe"):
                    if "grpc" not in c.get(kind, {}):
                        out.append("%s %s must be a native grpc probe" % (where, kind))
                    elif c[kind]["grpc"]["port"] != dl.port_of(listen):
                        out.append("%s %s probes port %s but CHOREO_LISTEN_ADDR is %s"
                                   % (where, kind, c[kind]["grpc"]["port"], listen))
                grpc_ports = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == "grpc"]
                if grpc_ports != [dl.port_of(listen)]:
                    out.append("%s: container port grpc %s != CHOREO_LISTEN_ADDR %s" % (where, grpc_ports, listen))
    return out


def references(docs, overlay):
    """ConfigMaps, ServiceAccounts and volumes that pods name exist."""
    out = []
    cms = {c["metadata"]["name"] for c in dl.by_kind(docs, "ConfigMap")}
    sas = {c["metadata"]["name"] for c in dl.by_kind(docs, "ServiceAccount")}
    for w in dl.workloads(docs):
        spec = dl.pod_spec(w)
        name = "%s/%s" % (w["kind"], w["metadata"]["name"])
        if spec.get("serviceAccountName") not in sas:
            out.append("%s: serviceAccountName %r is not a ServiceAccount here" % (name, spec.get("serviceAccountName")))
        vols = {v["name"] for v in spec.get("volumes", [])}
        vols |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in cms:
                out.append("%s: volume %s names missing ConfigMap %s" % (name, v["name"], v["configMap"]["name"]))
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                if m["name"] not in vols:
                    out.append("%s: mount %s names no volume" % (name, m["name"]))
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef", {}).get("name")
                if ref and ref not in cms:
                    out.append("%s: envFrom names missing ConfigMap %s" % (name, ref))
    return out


# ------------------------------------------------------------ configuration


def config_keys(docs, overlay):
    """Every CHOREO_* key the pods get is a variable the binaries read (names
    found in common/config.c and services/**.c)."""
    known = dl.known_env_vars()
    out = []
    if not known:
        return ["found no CHOREO_* names in common/config.c"]
    for w, c in dl.choreo_containers(docs):
        for src in c.get("envFrom", []):
            cm = dl.find(docs, "ConfigMap", src["configMapRef"]["name"])
            for k in cm.get("data", {}):
                if k not in known:
                    out.append("ConfigMap %s key %s is not read by any binary (known: %s)"
                               % (cm["metadata"]["name"], k, ", ".join(sorted(known))))
        for e in c.get("env", []):
            if e["name"].startswith("CHOREO_") and e["name"] not in known:
                out.append("%s env %s is not read by any binary" % (w["metadata"]["name"], e["name"]))
    # The shared ConfigMap spells out every shared setting (not only some),
    # so an operator sees the whole configuration in one place.
    cm = [c for c in dl.by_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith("choreo-config-")][0]
    wanted = {k for k in known if k != "CHOREO_LISTEN_ADDR"} & set(SHARED_VARS)
    if set(cm["data"]) != wanted:
        out.append("choreo-config keys %s != the shared variables %s" % (sorted(cm["data"]), sorted(wanted)))
    return out


SHARED_VARS = ["CHOREO_NATS_URL", "CHOREO_LOG_LEVEL", "CHOREO_RPC_WORKERS", "CHOREO_MAX_MESSAGE_BYTES",
               "CHOREO_MAX_STREAMS", "CHOREO_SHUTDOWN_GRACE_MS", "CHOREO_PUBLISH_TIMEOUT_MS",
               "CHOREO_STREAM_REPLICAS", "CHOREO_STREAM_MAX_AGE_S"]


def size_bytes(text, nats=False):
    """Bytes in a Kubernetes quantity (1Gi binary, 1G decimal) or, with
    nats=True, a NATS size (900MB, 9GB: binary units)."""
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?)(B?)", str(text).strip(), re.I)
    assert m, "size %r not understood" % text
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[m.group(2).upper()]
    binary = nats or bool(m.group(3))
    return int(m.group(1)) * (1024 if binary else 1000) ** power


def nats_consistency(docs, overlay):
    """The services' NATS URLs name a Service or a StatefulSet pod that exists;
    cluster routes list exactly the StatefulSet's pods on its cluster port;
    stream replicas fit the cluster; JetStream fits its volume; grace periods
    cover the lame-duck and shutdown times."""
    out = []
    sts = dl.nats_statefulset(docs)
    replicas = sts["spec"].get("replicas", 1)
    headless = sts["spec"]["serviceName"]
    c = dl.pod_spec(sts)["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c["ports"]}
    _, conf = dl.nats_config_text(docs, sts)
    svc_ports = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in dl.by_kind(docs, "Service")}

    for w, ct in dl.choreo_containers(docs):
        env = dl.container_env(docs, w, ct)
        for url in env["CHOREO_NATS_URL"].split(","):
            m = re.fullmatch(r"nats://([a-z0-9.-]+):(\d+)", url.strip())
            if not m:
                out.append("%s: CHOREO_NATS_URL entry %r is not nats://host:port" % (w["metadata"]["name"], url))
                continue
            host, port = m.group(1), int(m.group(2))
            pod = re.fullmatch(r"%s-(\d+)\.%s" % (re.escape(sts["metadata"]["name"]), re.escape(headless)), host)
            if pod:
                if int(pod.group(1)) >= replicas:
                    out.append("%s: %s names pod %s but the StatefulSet has %d replicas"
                               % (w["metadata"]["name"], url, pod.group(1), replicas))
                if port != ports.get("client"):
                    out.append("%s: %s port is not the NATS client port %s" % (w["metadata"]["name"], url, ports.get("client")))
            elif host in svc_ports:
                if port not in svc_ports[host]:
                    out.append("%s: %s: Service %s has no port %d" % (w["metadata"]["name"], url, host, port))
            else:
                out.append("%s: %s: host %s is neither a Service nor a NATS pod" % (w["metadata"]["name"], url, host))
        r = int(env["CHOREO_STREAM_REPLICAS"])
        if r > replicas:
            out.append("%s: CHOREO_STREAM_REPLICAS=%d but NATS has %d servers" % (w["metadata"]["name"], r, replicas))
        grace = dl.pod_spec(w).get("terminationGracePeriodSeconds", 30)
        if grace * 1000 <= int(env["CHOREO_SHUTDOWN_GRACE_MS"]) + 2000:
            out.append("%s: terminationGracePeriodSeconds %d leaves no margin over CHOREO_SHUTDOWN_GRACE_MS %s"
                       % (w["metadata"]["name"], grace, env["CHOREO_SHUTDOWN_GRACE_MS"]))

    routes = re.findall(r"nats://([a-z0-9.-]+):(\d+)", conf.split("cluster", 1)[1]) if "cluster" in conf else []
    expected = [("%s-%d.%s" % (sts["metadata"]["name"], i, headless), str(ports.get("cluster"))) for i in range(replicas)]
    if replicas > 1:
        if sorted(routes) != sorted(expected):
            out.append("nats.conf routes %s != the StatefulSet's pods %s" % (routes, expected))
        m = re.search(r"cluster\s*\{[^}]*?\bport:\s*(\d+)", conf, re.S)
        if not m or int(m.group(1)) != ports.get("cluster"):
            out.append("nats.conf cluster port %s != container port cluster %s" % (m and m.group(1), ports.get("cluster")))
    elif routes:
        out.append("single NATS server configured with routes %s" % routes)
    for key, port_name in (("port", "client"), ("http_port", "monitor")):
        m = re.search(r"^%s:\s*(\d+)" % key, conf, re.M)
        if not m or int(m.group(1)) != ports.get(port_name):
            out.append("nats.conf %s %s != container port %s %s" % (key, m and m.group(1), port_name, ports.get(port_name)))
    m = re.search(r"store_dir:\s*\"?([^\"\s]+)", conf)
    mounts = [vm for vm in c["volumeMounts"] if m and m.group(1).startswith(vm["mountPath"])]
    if not m or not any(vm["name"] in [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] for vm in mounts):
        out.append("JetStream store_dir %s is not on a volumeClaimTemplate" % (m and m.group(1)))
    m = re.search(r"max_file_store:\s*(\S+)", conf)
    pvc = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    if not m or size_bytes(m.group(1), nats=True) >= size_bytes(pvc):
        out.append("max_file_store %s must stay below the volume claim %s" % (m and m.group(1), pvc))
    m = re.search(r"pid_file:\s*\"?([^\"\s]+)", conf)
    prestop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if not m or not any(m.group(1) in a for a in prestop):
        out.append("preStop %s does not signal the pid_file %s" % (prestop, m and m.group(1)))
    ld = sum(int(x) for x in re.findall(r"lame_duck_(?:duration|grace_period):\s*(\d+)s", conf))
    if dl.pod_spec(sts).get("terminationGracePeriodSeconds", 30) <= ld:
        out.append("NATS terminationGracePeriodSeconds must exceed lame duck duration + grace (%ds)" % ld)
    env = dl.container_env(docs, sts, c)
    if "$POD_NAME" in conf and "POD_NAME" not in env:
        out.append("nats.conf uses $POD_NAME but the container has no POD_NAME")
    probes = dl.probe_paths(c)
    want = {"startupProbe": "/healthz", "readinessProbe": "/healthz?js-server-only=true",
            "livenessProbe": "/healthz?js-enabled-only=true"}
    if probes != want:
        out.append("NATS probes %s != %s" % (probes, want))
    return out


def nats_version(docs, overlay):
    """Clustered streams before nats-server 2.9.21 race on expected last
    subject sequence: every NATS image must be a pinned version after it."""
    out = []
    for w in dl.workloads(docs):
        for c in dl.pod_spec(w)["containers"]:
            if dl.image_name(c["image"]).rsplit("/", 1)[-1] != "nats":
                continue
            m = re.match(r"(\d+)\.(\d+)\.(\d+)", dl.image_tag(c["image"]))
            if not m:
                out.append("NATS image %s is not pinned to a version" % c["image"])
            elif tuple(int(x) for x in m.groups()) <= (2, 9, 21):
                out.append("NATS image %s is not newer than 2.9.21" % c["image"])
    return out


# ------------------------------------------------------------ pod hygiene


def security(docs, overlay):
    out = []
    uid = dockerfile_uid()
    for w in dl.workloads(docs):
        spec = dl.pod_spec(w)
        psc = spec.get("securityContext", {})
        for c in spec["containers"]:
            where = "%s/%s container %s" % (w["kind"], w["metadata"]["name"], c["name"])
            sc = c.get("securityContext", {})
            merged = dict(psc)
            merged.update(sc)
            if merged.get("runAsNonRoot") is not True:
                out.append("%s: runAsNonRoot is not true" % where)
            if not isinstance(merged.get("runAsUser"), int) or merged["runAsUser"] == 0:
                out.append("%s: no fixed non-zero runAsUser" % where)
            if not isinstance(merged.get("runAsGroup"), int) or merged["runAsGroup"] == 0:
                out.append("%s: no fixed non-zero runAsGroup" % where)
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append("%s: allowPrivilegeEscalation is not false" % where)
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append("%s: readOnlyRootFilesystem is not true" % where)
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                out.append("%s: capabilities must drop ALL and add none" % where)
            if merged.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                out.append("%s: seccompProfile is not RuntimeDefault" % where)
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(part, {}):
                        out.append("%s: no %s.%s" % (where, part, r))
            if dl.is_choreo_image(c["image"]) and uid and (merged.get("runAsUser"), merged.get("runAsGroup")) != uid:
                out.append("%s: runs as %s:%s but the Dockerfile's USER is %s:%s"
                           % (where, merged.get("runAsUser"), merged.get("runAsGroup"), uid[0], uid[1]))
        if spec.get("automountServiceAccountToken") is not False:
            out.append("%s/%s: automountServiceAccountToken should be false (no API access needed)"
                       % (w["kind"], w["metadata"]["name"]))
    return out


def labels(docs, overlay):
    out = []
    for d in docs:
        lab = d["metadata"].get("labels", {})
        if lab.get("app.kubernetes.io/part-of") != "choreo":
            out.append("%s/%s lacks app.kubernetes.io/part-of=choreo" % (d["kind"], d["metadata"]["name"]))
    for w in dl.workloads(docs):
        pl = dl.pod_labels(w)
        for k in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"):
            if k not in pl:
                out.append("%s/%s pods lack label %s" % (w["kind"], w["metadata"]["name"], k))
    return out


# ------------------------------------------------------------ image and Dockerfile


def dockerfile_text():
    with open(os.path.join(dl.REPO, "Dockerfile"), encoding="utf-8") as f:
        return f.read()


def dockerfile_uid():
    m = re.search(r"^USER\s+(\d+):(\d+)\s*$", dockerfile_text(), re.M)
    return (int(m.group(1)), int(m.group(2))) if m else None


def image_contents(docs, overlay):
    """The Dockerfile's runtime stage runs as a fixed uid:gid and copies the
    binaries to the directory the manifests' commands use; each service runs
    its own binary."""
    out = []
    text = dockerfile_text()
    if not dockerfile_uid():
        out.append("Dockerfile has no numeric USER uid:gid")
    stages = re.split(r"^FROM\s", text, flags=re.M)
    runtime = stages[-1]
    if not runtime.startswith("debian:${DEBIAN_RELEASE}-slim") and not runtime.startswith("debian:bookworm-slim"):
        out.append("runtime stage is not debian bookworm-slim: %s" % runtime.splitlines()[0])
    m = re.search(r"^COPY\s+--from=build\s+\S+\s+(\S+)", runtime, re.M)
    bindir = m.group(1).rstrip("/") if m else None
    if re.search(r"\b(build-essential|cmake|gcc|-dev)\b", re.sub(r"#.*", "", runtime)):
        out.append("runtime stage installs build tools")
    for w, c in dl.choreo_containers(docs):
        cmd = c.get("command", [])
        svc = w["metadata"]["name"]
        if not cmd or cmd[0] != "%s/choreo-%s" % (bindir, svc):
            out.append("%s runs %s, expected %s/choreo-%s (Dockerfile COPY target)" % (svc, cmd, bindir, svc))
    return out


# ------------------------------------------------------------ overlay specifics


def dev_shape():
    docs = dl.render(ARGS, "deploy/overlays/dev")
    for w in dl.workloads(docs):
        assert w["spec"].get("replicas", 1) == 1, "dev: %s has %s replicas" % (w["metadata"]["name"], w["spec"]["replicas"])
    assert not dl.by_kind(docs, "NetworkPolicy"), "dev: NetworkPolicies would need a CNI kind may lack"
    for w, c in dl.choreo_containers(docs):
        assert c["image"] == dl.CHOREO_IMAGE, "dev: %s image %s, Tilt builds %s" % (w["metadata"]["name"], c["image"], dl.CHOREO_IMAGE)


def prod_shape():
    docs = dl.render(ARGS, "deploy/overlays/prod")
    sts = dl.nats_statefulset(docs)
    assert sts["spec"]["replicas"] == 3, "prod: NATS must run 3 servers"
    assert sts["spec"].get("podManagementPolicy") == "Parallel", "prod: NATS pods must start in parallel"
    for w, c in dl.choreo_containers(docs):
        env = dl.container_env(docs, w, c)
        assert env["CHOREO_STREAM_REPLICAS"] == "3", "prod: %s streams not replicated 3 ways" % w["metadata"]["name"]
        assert w["spec"]["replicas"] >= 2, "prod: %s runs %s replicas" % (w["metadata"]["name"], w["spec"]["replicas"])
        tag = dl.image_tag(c["image"])
        assert tag and tag != "latest", "prod: %s image %s not pinned by tag" % (w["metadata"]["name"], c["image"])
    pdbs = dl.by_kind(docs, "PodDisruptionBudget")
    for w in dl.workloads(docs):
        mine = [p for p in pdbs if dl.matches(p["spec"]["selector"], dl.pod_labels(w))]
        assert len(mine) == 1, "prod: %s is covered by %d PodDisruptionBudgets" % (w["metadata"]["name"], len(mine))
        p = mine[0]["spec"]
        n = w["spec"]["replicas"]
        allowed = p["maxUnavailable"] if "maxUnavailable" in p else n - p["minAvailable"]
        assert 1 <= allowed < n, "prod: PDB of %s allows %s of %d down" % (w["metadata"]["name"], allowed, n)


def reachable(docs, target, port):
    """Workload names allowed to reach `target` on TCP `port` under the
    namespace's NetworkPolicies (ingress), or {'*'} for any source."""
    pols = [p for p in dl.by_kind(docs, "NetworkPolicy")
            if "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and dl.matches(p["spec"]["podSelector"], dl.pod_labels(target))]
    if not pols:
        return {"*"}
    out = set()
    for p in pols:
        for rule in p["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(pp.get("port") == port for pp in ports):
                continue
            if not rule.get("from"):
                return {"*"}
            for f in rule["from"]:
                if set(f) != {"podSelector"}:
                    out.add("*")
                    continue
                out |= {w["metadata"]["name"] for w in dl.workloads(docs) if dl.matches(f["podSelector"], dl.pod_labels(w))}
    return out


def prod_network():
    docs = dl.render(ARGS, "deploy/overlays/prod")
    default = [p for p in dl.by_kind(docs, "NetworkPolicy") if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert default, "prod: no default-deny ingress NetworkPolicy"
    nats = dl.nats_statefulset(docs)
    assert reachable(docs, nats, 4222) == set(dl.SERVICES), \
        "prod: NATS client port reachable from %s, want only the services" % reachable(docs, nats, 4222)
    assert reachable(docs, nats, 6222) == {"nats"}, "prod: NATS routes reachable from %s" % reachable(docs, nats, 6222)
    assert reachable(docs, nats, 8222) == set(), "prod: NATS monitoring reachable from %s" % reachable(docs, nats, 8222)
    for w, c in dl.choreo_containers(docs):
        grpc = dl.SERVICES[w["metadata"]["name"]]
        assert reachable(docs, w, grpc) == {"*"}, "prod: %s gRPC port not reachable" % w["metadata"]["name"]
        for other in (4222, 6222, 8222, 9090):
            assert reachable(docs, w, other) == set(), "prod: %s port %d reachable" % (w["metadata"]["name"], other)


# ------------------------------------------------------------ self-test


def _dep(docs, name):
    return dl.find(docs, "Deployment", name)


def _ctr(docs, name):
    return dl.pod_spec(_dep(docs, name))["containers"][0]


def _cm(docs, prefix):
    return [c for c in dl.by_kind(docs, "ConfigMap") if c["metadata"]["name"].startswith(prefix)][0]


def _set_conf(docs, fn):
    cm = _cm(docs, "nats-config-")
    cm["data"]["nats.conf"] = fn(cm["data"]["nats.conf"])


MUTATIONS = [
    ("pod label differs from selector", selectors,
     lambda d: dl.pod_labels(_dep(d, "orders")).update({"app.kubernetes.io/name": "order"})),
    ("Service targetPort misspelled", services,
     lambda d: dl.find(d, "Service", "payment")["spec"]["ports"][0].update({"targetPort": "grcp"})),
    ("gRPC probe on another port", probes,
     lambda d: _ctr(d, "inventory")["readinessProbe"]["grpc"].update({"port": 50051})),
    ("listen address moved off the probe port", probes,
     lambda d: _ctr(d, "notifications")["env"][0].update({"value": "0.0.0.0:6000"})),
    ("envFrom names a missing ConfigMap", references,
     lambda d: _ctr(d, "orders")["envFrom"][0]["configMapRef"].update({"name": "nope"})),
    ("ConfigMap key the binaries do not read", config_keys,
     lambda d: _cm(d, "choreo-config-")["data"].update({"CHOREO_NAT_URL": "x"})),
    ("NATS URL names a pod that does not exist", nats_consistency,
     lambda d: _cm(d, "choreo-config-")["data"].update({"CHOREO_NATS_URL": "nats://nats-3.nats-headless:4222"})),
    ("stream replicas above the NATS servers", nats_consistency,
     lambda d: _cm(d, "choreo-config-")["data"].update({"CHOREO_STREAM_REPLICAS": "5"})),
    ("route to a pod the StatefulSet lacks", nats_consistency,
     lambda d: _set_conf(d, lambda c: c.replace("nats-2.nats-headless", "nats-7.nats-headless"))),
    ("JetStream larger than its volume", nats_consistency,
     lambda d: _set_conf(d, lambda c: c.replace("max_file_store: 9GB", "max_file_store: 20GB"))),
    ("NATS image too old", nats_version,
     lambda d: dl.pod_spec(dl.nats_statefulset(d))["containers"][0].update({"image": "nats:2.9.20-alpine"})),
    ("writable root filesystem", security,
     lambda d: _ctr(d, "payment")["securityContext"].update({"readOnlyRootFilesystem": False})),
    ("no memory limit", security,
     lambda d: _ctr(d, "orders")["resources"]["limits"].pop("memory")),
    ("wrong binary for the service", image_contents,
     lambda d: _ctr(d, "payment").update({"command": ["/usr/local/bin/choreo-orders"]})),
]


def self_test():
    """Each check reports the fault it exists for, so its pass means something."""
    import copy

    base = dl.render(ARGS, "deploy/overlays/prod")
    for fn in (selectors, services, probes, references, config_keys, nats_consistency, nats_version,
               security, image_contents):
        assert not fn(copy.deepcopy(base), "prod"), "%s fails on the unmodified prod overlay" % fn.__name__
    missed = []
    for what, fn, mutate in MUTATIONS:
        docs = copy.deepcopy(base)
        mutate(docs)
        if not fn(docs, "prod"):
            missed.append(what)
    assert not missed, "checks missed: %s" % missed
    docs = copy.deepcopy(base)
    pol = dl.find(docs, "NetworkPolicy", "nats")
    pol["spec"]["ingress"][0]["from"][0]["podSelector"] = {}
    assert reachable(docs, dl.nats_statefulset(docs), 4222) != set(dl.SERVICES), "reachable() missed an open NATS port"


if __name__ == "__main__":
    dl.require_modules()
    dl.run_checks([
        ("self-test: each check catches its fault", self_test),
        ("workload selectors match pod labels", each_overlay(selectors)),
        ("Service selectors and targetPorts", each_overlay(services)),
        ("probe ports exist; gRPC probes on the listen port", each_overlay(probes)),
        ("ConfigMaps, ServiceAccounts, volumes exist", each_overlay(references)),
        ("ConfigMap keys are variables the binaries read", each_overlay(config_keys)),
        ("NATS URLs, routes, storage, grace periods", each_overlay(nats_consistency)),
        ("NATS image pinned after 2.9.21", each_overlay(nats_version)),
        ("security context and resources", each_overlay(security)),
        ("app.kubernetes.io labels", each_overlay(labels)),
        ("Dockerfile installs what the manifests run", each_overlay(image_contents)),
        ("dev: one replica each, Tilt's image", dev_shape),
        ("prod: replicas, stream replicas, PDBs, pinned image", prod_shape),
        ("prod: NetworkPolicies", prod_network),
    ])
