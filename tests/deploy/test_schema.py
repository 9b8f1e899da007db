#!/usr/bin/env python3
"""Strict schema validation of every rendered object against the Kubernetes
1.32 definitions (../shared/k8s/k8s-v1.32.0-definitions.json beside the
repository; never copied into it).

Strict as kubeconform -strict: every object schema that lists properties gets
additionalProperties: false, so a misspelled field such as `readinesProbe` is
an error. Self-tests show the validator rejects a misspelled field, a wrong
type and an unknown kind, so a pass is not vacuous."""

import copy
import json
import os

import deploylib as dl

ARGS = dl.parse_args()
_validator = {}


def strictify(node):
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strictify(v)
    elif isinstance(node, list):
        for v in node:
            strictify(v)


def load():
    """(definitions index by (apiVersion, kind), strict root schema)."""
    if _validator:
        return _validator["index"], _validator["root"]
    if not os.path.exists(dl.DEFINITIONS):
        raise dl.Skip("Kubernetes definitions not found at %s (expected ../shared/k8s beside the "
                      "repository); schema validation needs them and they are not kept in the repo"
                      % dl.DEFINITIONS)
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        raise AssertionError("python3-jsonschema is missing (scripts/deps.sh installs it)")
    with open(dl.DEFINITIONS, encoding="utf-8") as f:
        defs = json.load(f)["definitions"]
    index = {}
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            api = gvk["version"] if not gvk["group"] else gvk["group"] + "/" + gvk["version"]
            index[(api, gvk["kind"])] = name
    root = {"definitions": copy.deepcopy(defs)}
    strictify(root["definitions"])
    _validator["index"], _validator["root"] = index, root
    return index, root


def errors(obj):
    """Validation errors of one object, as readable strings."""
    import jsonschema

    index, root = load()
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key not in index:
        return ["no schema for apiVersion %s kind %s" % key]
    schema = {"$ref": "#/definitions/" + index[key], "definitions": root["definitions"]}
    v = jsonschema.Draft4Validator(schema)
    out = []
    for e in sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = "/".join(str(p) for p in e.absolute_path)
        out.append("%s/%s: %s: %s" % (obj["kind"], obj["metadata"]["name"], path or "(root)", e.message[:300]))
    return out


def check_overlay(overlay):
    def check():
        load()
        docs = dl.render(ARGS, overlay)
        errs = []
        for d in docs:
            errs += errors(d)
        assert not errs, "%d schema errors in %s:\n  %s" % (len(errs), overlay, "\n  ".join(errs))
        print("     %s: %d objects valid" % (overlay, len(docs)))
    return check


def first_deployment():
    return copy.deepcopy(dl.by_kind(dl.render(ARGS, "deploy/overlays/dev"), "Deployment")[0])


def self_test_misspelled_field():
    load()
    d = first_deployment()
    c = d["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    errs = errors(d)
    assert any("readinesProbe" in e for e in errs), "misspelled readinesProbe was accepted: %s" % errs
    assert not errors(first_deployment()), "the unmodified Deployment should be valid"


def self_test_misspelled_nested_field():
    load()
    d = first_deployment()
    d["spec"]["template"]["spec"]["securityContext"]["runAsNonroot"] = True
    errs = errors(d)
    assert any("runAsNonroot" in e for e in errs), "misspelled runAsNonroot was accepted: %s" % errs


def self_test_wrong_type():
    load()
    d = first_deployment()
    d["spec"]["replicas"] = "two"
    c = d["spec"]["template"]["spec"]["containers"][0]
    c["readinessProbe"]["grpc"]["port"] = "grpc"
    errs = errors(d)
    assert any("replicas" in e for e in errs), "replicas: \"two\" was accepted: %s" % errs
    assert any("grpc/port" in e for e in errs), "a named gRPC probe port was accepted: %s" % errs


def self_test_unknown_kind():
    load()
    errs = errors({"apiVersion": "apps/v1", "kind": "Deploymnet", "metadata": {"name": "x"}})
    assert errs and "no schema" in errs[0], "an unknown kind was accepted: %s" % errs


if __name__ == "__main__":
    dl.require_modules()
    if not os.path.exists(dl.DEFINITIONS):
        print("SKIP schema validation: Kubernetes definitions not found at %s (they belong in "
              "../shared/k8s beside the repository and are never copied into it)" % dl.DEFINITIONS)
        raise SystemExit(dl.SKIP_CODE)
    dl.run_checks([
        ("self-test: misspelled field rejected", self_test_misspelled_field),
        ("self-test: misspelled nested field rejected", self_test_misspelled_nested_field),
        ("self-test: wrong types rejected", self_test_wrong_type),
        ("self-test: unknown kind rejected", self_test_unknown_kind),
        ("schema deploy/base", check_overlay("deploy/base")),
        ("schema deploy/overlays/dev", check_overlay("deploy/overlays/dev")),
        ("schema deploy/overlays/prod", check_overlay("deploy/overlays/prod")),
    ])
