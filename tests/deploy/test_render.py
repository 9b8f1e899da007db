#!/usr/bin/env python3
"""Every kustomize overlay renders with `kubectl kustomize`, and each holds the
objects the deployment needs (so a render that silently drops a resource
fails here)."""

import deploylib as dl

ARGS = dl.parse_args()


def expect(docs, pairs):
    have = {(d["kind"], d["metadata"]["name"]) for d in docs}
    missing = [p for p in pairs if p not in have]
    assert not missing, "missing objects: %s" % missing


def core_objects():
    pairs = [("Namespace", "choreo"), ("StatefulSet", "nats"), ("Service", "nats"),
             ("Service", "nats-headless"), ("ServiceAccount", "nats")]
    for s in dl.SERVICES:
        pairs += [("Deployment", s), ("Service", s), ("ServiceAccount", s)]
    return pairs


def check_overlay(overlay, extra=()):
    def check():
        docs = dl.render(ARGS, overlay)
        assert docs, "%s rendered nothing" % overlay
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"), \
                "object without apiVersion/kind/name: %s" % d
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == "choreo", \
                    "%s/%s is not in namespace choreo" % (d["kind"], d["metadata"]["name"])
        expect(docs, core_objects() + list(extra))
        cms = [c["metadata"]["name"] for c in dl.by_kind(docs, "ConfigMap")]
        for prefix in ("choreo-config-", "nats-config-"):
            assert any(n.startswith(prefix) for n in cms), "no ConfigMap %s<hash> in %s" % (prefix, cms)
        print("     %s: %d objects" % (overlay, len(docs)))
    return check


PROD_EXTRA = [("PodDisruptionBudget", n) for n in ["nats"] + list(dl.SERVICES)] + \
    [("NetworkPolicy", n) for n in ["default-deny-ingress", "nats"] + list(dl.SERVICES)]

if __name__ == "__main__":
    dl.require_modules()
    dl.run_checks([
        ("render deploy/base", check_overlay("deploy/base")),
        ("render deploy/overlays/dev", check_overlay("deploy/overlays/dev")),
        ("render deploy/overlays/prod", check_overlay("deploy/overlays/prod", PROD_EXTRA)),
    ])
