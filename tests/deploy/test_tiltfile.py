#!/usr/bin/env python3
"""Executes the Tiltfile with stub builtins that record what it declares, and
checks the declarations against the repository and the dev overlay it
deploys: images built are used, k8s_resource names are workloads, port
forwards reach container ports, paths exist, services start after NATS, and
the image's build context covers the CMake tree.

The Tiltfile is Starlark. Python's exec also accepts constructs Starlark
rejects (f-strings, while, classes, imports, try, sets, `is`), so the file is
first checked for those, and it runs with Starlark's builtins only."""

import ast
import os
import re

import deploylib as dl

ARGS = dl.parse_args()
TILTFILE = os.path.join(dl.REPO, "Tiltfile")

# Python syntax Starlark (as Tilt configures it) does not have.
NOT_STARLARK = {
    ast.JoinedStr: "f-string", ast.While: "while loop", ast.ClassDef: "class", ast.Import: "import",
    ast.ImportFrom: "import", ast.Try: "try", ast.With: "with", ast.Global: "global",
    ast.Nonlocal: "nonlocal", ast.Yield: "yield", ast.YieldFrom: "yield", ast.Await: "await",
    ast.AsyncFunctionDef: "async def", ast.NamedExpr: ":=", ast.Set: "set literal",
    ast.SetComp: "set comprehension", ast.Raise: "raise", ast.Assert: "assert", ast.Delete: "del",
    ast.GeneratorExp: "generator expression", ast.Starred: "starred assignment",
}
STARLARK_BUILTINS = ["any", "all", "bool", "dict", "dir", "enumerate", "float", "getattr", "hasattr", "hash",
                     "int", "len", "list", "max", "min", "print", "range", "repr", "reversed", "sorted", "str",
                     "tuple", "type", "zip"]


def starlark_problems(source):
    tree = ast.parse(source, TILTFILE)
    out = []
    for node in ast.walk(tree):
        for t, what in NOT_STARLARK.items():
            if isinstance(node, t):
                out.append("line %d: %s" % (node.lineno, what))
        if isinstance(node, ast.Compare):
            if len(node.ops) > 1:
                out.append("line %d: chained comparison" % node.lineno)
            if any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                out.append("line %d: `is`" % node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Starred):
            out.append("line %d: starred call" % node.lineno)
    return out


class Blob(str):
    """What kustomize()/read_file() return: YAML text, here its source path."""

    def __new__(cls, text, source):
        b = str.__new__(cls, text)
        b.source = source
        return b


class Struct:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class Recorder:
    """The Tilt API the Tiltfile may use, recording each call."""

    def __init__(self):
        self.calls = []
        self.loads = []

    def fn(self, name, result=None):
        def call(*args, **kw):
            self.calls.append((name, args, kw))
            return result(*args, **kw) if result else None
        return call

    def named(self, name):
        return [(a, k) for n, a, k in self.calls if n == name]

    def globals(self):
        def load(module, *symbols, **kw):
            self.loads.append(module)
            if module.startswith("ext://"):
                vendored = os.path.join(dl.REPO, "tilt_modules", module[len("ext://"):])
                if not os.path.isdir(vendored):
                    raise AssertionError("load(%r): remote extension, downloaded at `tilt up` unless "
                                         "vendored under tilt_modules/" % module)
            raise AssertionError("load(%r): the test has no stub for loaded modules" % module)

        def fail(msg):
            raise AssertionError("Tiltfile fail(): %s" % msg)

        def path(p):
            return os.path.join(dl.REPO, p) if not os.path.isabs(p) else p

        g = {"__builtins__": {b: __builtins__[b] if isinstance(__builtins__, dict) else getattr(__builtins__, b)
                              for b in STARLARK_BUILTINS}}
        g.update({
            "True": True, "False": False, "None": None,
            "load": load, "fail": fail,
            "docker_build": self.fn("docker_build"), "custom_build": self.fn("custom_build"),
            "k8s_yaml": self.fn("k8s_yaml"),
            "kustomize": self.fn("kustomize", lambda p, **kw: Blob("", p)),
            "k8s_resource": self.fn("k8s_resource"), "local_resource": self.fn("local_resource"),
            "allow_k8s_contexts": self.fn("allow_k8s_contexts"), "default_registry": self.fn("default_registry"),
            "watch_file": self.fn("watch_file"), "update_settings": self.fn("update_settings"),
            "read_file": self.fn("read_file", lambda p, default=None: Blob(open(path(p)).read(), p)),
            "sync": self.fn("sync", lambda a, b: ("sync", a, b)), "run": self.fn("run", lambda c, **kw: ("run", c)),
            "fall_back_on": self.fn("fall_back_on", lambda f: ("fall_back_on", f)),
            "TRIGGER_MODE_AUTO": "auto", "TRIGGER_MODE_MANUAL": "manual",
            "os": Struct(getcwd=lambda: dl.REPO, getenv=lambda k, d=None: d,
                         path=Struct(exists=lambda p: os.path.exists(path(p)), join=os.path.join,
                                     basename=os.path.basename, dirname=os.path.dirname)),
        })
        return g


_cache = {}


def tilt_source():
    with open(TILTFILE, encoding="utf-8") as f:
        return f.read()


def tilt(source=None):
    """The Recorder of one run of the Tiltfile (or of `source` instead)."""
    if source is None and "r" in _cache:
        return _cache["r"]
    r = Recorder()
    try:
        exec(compile(source or tilt_source(), TILTFILE, "exec"), r.globals())
    except NameError as e:
        raise AssertionError("Tiltfile uses a name that is not Starlark/Tilt (or lacks a stub): %s" % e)
    if source is None:
        _cache["r"] = r
    return r


def dev_docs(r):
    blobs = [a[0] for a, _ in r.named("k8s_yaml")]
    assert len(blobs) == 1 and isinstance(blobs[0], Blob), "expected one k8s_yaml(kustomize(...)), got %s" % blobs
    overlay = blobs[0].source
    assert overlay.rstrip("/") == "deploy/overlays/dev", "Tilt deploys %s, expected deploy/overlays/dev" % overlay
    return dl.render(ARGS, overlay)


# ------------------------------------------------------------ checks


def check_starlark():
    with open(TILTFILE, encoding="utf-8") as f:
        problems = starlark_problems(f.read())
    assert not problems, "not Starlark: %s" % problems
    assert not starlark_problems("x = 1\nfor a, b in [(1, 2)]:\n    y = '%d' % a\n"), "subset check too strict"
    assert starlark_problems("x = f'{1}'\n"), "subset check missed an f-string"
    assert starlark_problems("while True:\n    pass\n"), "subset check missed while"
    tilt()


def check_images_used(r=None):
    r = r or tilt()
    docs = dev_docs(r)
    builds = [a[0] for a, _ in r.named("docker_build")] + [a[0] for a, _ in r.named("custom_build")]
    assert builds, "the Tiltfile builds no image"
    used = {dl.image_name(c["image"]) for w in dl.workloads(docs) for c in dl.pod_spec(w)["containers"]}
    unused = [b for b in builds if b not in used]
    assert not unused, "images built but used by no dev workload: %s (used: %s)" % (unused, sorted(used))
    for w, c in dl.choreo_containers(docs):
        assert dl.image_name(c["image"]) in builds, "%s runs %s, which Tilt does not build" % (w["metadata"]["name"], c["image"])


def check_resources(r=None):
    r = r or tilt()
    docs = dev_docs(r)
    wl = {w["metadata"]["name"]: w for w in dl.workloads(docs)}
    res = r.named("k8s_resource")
    names = [a[0] if a else k.get("workload") for a, k in res]
    local = [a[0] if a else k.get("name") for a, k in r.named("local_resource")]
    for n in names:
        assert n in wl, "k8s_resource(%r) names no workload of the dev overlay (have %s)" % (n, sorted(wl))
    assert sorted(names) == sorted(wl), "workloads without k8s_resource: %s" % sorted(set(wl) - set(names))
    assert len(set(names)) == len(names), "duplicate k8s_resource: %s" % names
    local_ports = []
    for (a, k), n in zip(res, names):
        assert k.get("labels"), "k8s_resource(%r) has no labels" % n
        for dep in k.get("resource_deps", []):
            assert dep in names or dep in local, "k8s_resource(%r) depends on unknown %r" % (n, dep)
        ports = [p for c in dl.pod_spec(wl[n])["containers"] for p in c.get("ports", [])]
        for pf in k.get("port_forwards", []):
            m = re.fullmatch(r"(?:(\d+):)?(\d+)", str(pf))
            assert m, "port_forward %r of %s not understood" % (pf, n)
            remote = int(m.group(2))
            assert any(p["containerPort"] == remote for p in ports), \
                "%s: port_forward %s targets no container port (%s)" % (n, pf, [p["containerPort"] for p in ports])
            local_ports.append(int(m.group(1) or remote))
        if n in dl.SERVICES:
            assert "nats" in k.get("resource_deps", []), "%s does not start after nats" % n
            assert "%d:%d" % (dl.SERVICES[n], dl.SERVICES[n]) in k.get("port_forwards", []), \
                "%s: gRPC port %d not forwarded to localhost" % (n, dl.SERVICES[n])
    assert len(set(local_ports)) == len(local_ports), "two port_forwards share a local port: %s" % local_ports
    assert 4222 in local_ports, "NATS 4222 is not forwarded (the CLI needs it)"


def referenced_paths(r):
    paths = []
    for a, k in r.named("docker_build"):
        ctx = a[1] if len(a) > 1 else k.get("context")
        paths.append(ctx)
        paths.append(os.path.join(ctx, k.get("dockerfile", "Dockerfile")))
        paths += [os.path.join(ctx, p) for p in k.get("only", [])]
    paths += [a[0] if a else k["path"] for a, k in r.named("watch_file")]
    for a, k in r.named("local_resource"):
        deps = k.get("deps", [])
        paths += [deps] if isinstance(deps, str) else list(deps)
    paths += [a[0].source for a, _ in r.named("k8s_yaml") if isinstance(a[0], Blob)]
    paths += [a[0] for a, _ in r.named("kustomize")]
    return paths


def check_paths(r=None):
    r = r or tilt()
    missing = [p for p in referenced_paths(r) if not os.path.exists(os.path.join(dl.REPO, p))]
    assert not missing, "the Tiltfile references paths that do not exist: %s" % missing
    assert not r.loads, "the Tiltfile loads %s; extensions are not vendored" % r.loads


def cmake_subdirs(cmakelists):
    """Directories add_subdirectory()'d unconditionally (outside if blocks)."""
    out, depth = [], 0
    with open(cmakelists, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if re.match(r"if\s*\(", line):
                depth += 1
            elif re.match(r"endif\s*\(", line):
                depth -= 1
            m = re.match(r"add_subdirectory\s*\(\s*([^\s)]+)", line)
            if m and depth == 0:
                out.append(m.group(1))
    return out


def check_build_context(r=None):
    """docker_build's only= holds the whole CMake tree that configure needs,
    and .dockerignore does not drop any of it."""
    r = r or tilt()
    (a, k), = [b for b in r.named("docker_build") if b[0][0] == dl.CHOREO_IMAGE]
    only = [p.rstrip("/") for p in k.get("only", [])]

    def covered(p):
        return any(p == o or p.startswith(o + "/") for o in only)

    need = ["CMakeLists.txt", "scripts/deps.sh"]
    for d in cmake_subdirs(os.path.join(dl.REPO, "CMakeLists.txt")):
        need.append(d)
        sub = os.path.join(dl.REPO, d, "CMakeLists.txt")
        if not os.path.exists(sub):
            continue
        need.append(d + "/CMakeLists.txt")
        need += [d + "/" + s for s in cmake_subdirs(sub)]
    for line in open(os.path.join(dl.REPO, "CMakeLists.txt"), encoding="utf-8"):
        m = re.match(r"\s*include\s*\(\s*(cmake/\S+?)\s*\)", line)
        if m:
            need.append(m.group(1))
    missing = [p for p in need if p not in ("tests",) and not covered(p)]
    assert not missing, "docker_build only= lacks %s, which CMake configure needs" % missing
    ignore = [ln.strip().rstrip("/") for ln in open(os.path.join(dl.REPO, ".dockerignore"), encoding="utf-8")
              if ln.strip() and not ln.startswith("#")]
    dropped = [p for p in need if p in ignore]
    assert not dropped, ".dockerignore drops %s" % dropped


MUTATIONS = [
    ("k8s_resource for a workload that does not exist", check_resources, ("'nats',\n    port", "'natz',\n    port")),
    ("service no longer waits for nats", check_resources, ("resource_deps=['nats']", "resource_deps=[]")),
    ("gRPC port forwarded to the wrong port", check_resources, ("'%d:%d' % (port, port)", "'%d:%d' % (port, port + 10)")),
    ("image built under another name", check_images_used, ("    'choreo',\n    '.',", "    'choreo-x',\n    '.',")),
    ("a path that does not exist", check_paths, ("'proto',", "'protos',")),
    ("a CMake directory left out of the context", check_build_context, ("'common',\n", "")),
    ("remote extension", check_paths, ("k8s_yaml(", "load('ext://restart_process', 'docker_build_with_restart')\nk8s_yaml(")),
]


def self_test():
    """Each check rejects a Tiltfile broken the way it guards against."""
    src = tilt_source()
    missed = []
    for what, check, (old, new) in MUTATIONS:
        assert old in src, "self-test mutation %r no longer applies to the Tiltfile" % what
        try:
            check(tilt(src.replace(old, new, 1)))
        except AssertionError:
            continue
        missed.append(what)
    assert not missed, "checks missed: %s" % missed


if __name__ == "__main__":
    dl.require_modules()
    dl.run_checks([
        ("Tiltfile is Starlark and runs with stub builtins", check_starlark),
        ("self-test: each check rejects its fault", self_test),
        ("every image built is used by a dev workload", check_images_used),
        ("k8s_resource names workloads; deps, labels, port forwards", check_resources),
        ("every path the Tiltfile references exists", check_paths),
        ("image build context covers the CMake tree", check_build_context),
    ])
