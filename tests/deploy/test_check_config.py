#!/usr/bin/env python3
"""Each binary's own configuration check accepts what the manifests give it:
for every overlay and every service container, the rendered ConfigMap plus
the container's env, and nothing else, pass `choreo-<svc> --check-config`
(exit 0). Every CHOREO_* key the manifests set is a variable the binary lists
in --help (unknown variables are not an error for the binaries, so this is
where a misspelled key is caught). A deliberately bad value exits 2 naming
the variable, so the check is not vacuous. Skipped while the binaries are
not built (pass --build-dir)."""

import subprocess

import deploylib as dl

ARGS = dl.parse_args()


def run_check(binary, env):
    full = dict(dl.BASE_ENV)
    full.update(env)
    r = subprocess.run([binary, "--check-config"], capture_output=True, text=True, timeout=10, env=full)
    return r.returncode, (r.stdout + r.stderr).strip()


def service_check(svc):
    def check():
        binary = dl.binary_path(ARGS, svc)
        if not binary:
            raise dl.Skip("choreo-%s not built (looked in %s/services/%s/); build it and re-run"
                          % (svc, ARGS.build_dir or "<no --build-dir>", svc))
        listed = dl.help_vars(binary)
        assert "CHOREO_NATS_URL" in listed, "choreo-%s --help lists no variables: %s" % (svc, listed)
        unknown_to_source = listed - dl.known_env_vars()
        assert not unknown_to_source, "--help lists %s, which the source scan misses" % unknown_to_source
        for overlay in dl.OVERLAYS:
            docs = dl.render(ARGS, overlay)
            found = [(w, c) for w, c in dl.choreo_containers(docs) if w["metadata"]["name"] == svc]
            assert len(found) == 1, "%s: %d containers for %s" % (overlay, len(found), svc)
            env = dl.container_env(docs, *found[0])
            extra = {k for k in env if k.startswith("CHOREO_")} - listed
            assert not extra, "%s: %s sets %s, which choreo-%s does not read" % (overlay, svc, sorted(extra), svc)
            code, out = run_check(binary, env)
            assert code == 0, "%s: choreo-%s --check-config rejects the rendered env (exit %d): %s" % (overlay, svc, code, out)
        code, out = run_check(binary, {"CHOREO_RPC_WORKERS": "0"})
        assert code == 2 and "CHOREO_RPC_WORKERS" in out, \
            "a bad CHOREO_RPC_WORKERS gave exit %d, output %r (want 2 naming the variable)" % (code, out)
    return check


if __name__ == "__main__":
    dl.require_modules()
    dl.run_checks([("choreo-%s --check-config on every overlay" % s, service_check(s)) for s in dl.SERVICES])
