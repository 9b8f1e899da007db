# syntax=docker/dockerfile:1
# One image for all choreo binaries (choreo-orders, choreo-inventory,
# choreo-payment, choreo-notifications, and the choreo CLI once it exists).
# Each Deployment picks its binary with `command:`. One image because the four
# services share one CMake build: compiling once and shipping one layer is
# faster than four builds of the same tree, and the runtime libraries, which
# are most of the image, are shared anyway.
#
#   docker build -t choreo .
#   docker run --rm choreo /usr/local/bin/choreo-payment --help
#
# Both stages use Debian 12 (bookworm), the project's reference platform.
ARG DEBIAN_RELEASE=bookworm

# ---- build: the same packages as a developer machine (scripts/deps.sh) ----
FROM debian:${DEBIAN_RELEASE} AS build
COPY scripts/deps.sh /tmp/deps.sh
RUN /tmp/deps.sh && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# The build directory is a BuildKit cache mount: under Tilt, a change to one
# .c file recompiles that file, not the whole tree. The binaries are copied
# out in the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/build,id=choreo-cmake-build \
    set -eu; \
    cmake -S /src -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHOREO_WERROR=ON; \
    cmake --build /build -j"$(nproc)"; \
    mkdir -p /out; \
    find /build -name CMakeFiles -prune -o -type f -perm -u+x \
         \( -name 'choreo-*' -o -name choreo \) -exec cp {} /out/ \; ; \
    for s in orders inventory payment notifications; do \
        test -x "/out/choreo-$s" || { echo "build: no choreo-$s was built" >&2; exit 1; }; \
    done; \
    strip --strip-unneeded /out/*; \
    ls -l /out

# ---- runtime: bookworm-slim with only the shared libraries the binaries use ----
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends libgrpc29 libnats3.4 libprotobuf-c1; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 choreo; \
    useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin choreo

COPY --from=build /out/ /usr/local/bin/
# Fail the build, not the pod, when a shared library is missing.
# --check-config validates the default configuration without touching the
# network, so it proves each service binary loads and starts its main().
RUN set -eu; for b in /usr/local/bin/choreo*; do \
        if ldd "$b" | grep 'not found'; then echo "runtime: $b lacks a library" >&2; exit 1; fi; \
    done; \
    for s in orders inventory payment notifications; do /usr/local/bin/choreo-$s --check-config; done

# The uid/gid the manifests' securityContext names (runAsUser/runAsGroup).
USER 10001:10001
EXPOSE 50051 50052 50053 50054
CMD ["/usr/local/bin/choreo-orders"]
