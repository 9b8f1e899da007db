/* natsd.h: a throwaway nats-server with JetStream for tests.
 *
 * natsd_start runs /usr/sbin/nats-server (or $CHOREO_NATS_SERVER) with
 * JetStream on file storage in a fresh temporary directory, on 127.0.0.1 and
 * a free (or given) client port plus a free monitoring port, and returns once
 * the server answers /healthz?js-enabled-only=true. The server log is
 * <dir>/nats-server.log. natsd_restart keeps the port and the store, so
 * streams and consumers survive it like a production restart. The caller owns
 * the natsd; natsd_destroy stops it and removes the directory. */
#ifndef CHOREO_TEST_NATSD_H
#define CHOREO_TEST_NATSD_H

#include "status.h"

typedef struct natsd natsd;

typedef struct natsd_options {
    int port;              /* client port; 0: a free one */
    const char *store_dir; /* reuse this JetStream store (not removed); NULL: fresh temp dir */
    int start_timeout_ms;  /* how long to wait for readiness; 0: 10000 */
} natsd_options;

/* Starts the server (o may be NULL for defaults) and waits until it is ready.
 * CH_UNAVAILABLE if it does not come up in time (its log is printed to
 * stderr), CH_INTERNAL on spawn or temp dir failure. */
ch_status natsd_start(natsd **out, const natsd_options *o);

/* "nats://127.0.0.1:PORT"; lives as long as n. */
const char *natsd_url(const natsd *n);

/* The client port. */
int natsd_port(const natsd *n);

/* The temporary directory (holds the store and the log). */
const char *natsd_dir(const natsd *n);

/* Stops the server with SIGTERM and waits (SIGKILL after 10 s). CH_OK also if
 * it was not running. */
ch_status natsd_stop(natsd *n);

/* Stops the server with SIGKILL (a crash, no clean shutdown). */
ch_status natsd_kill(natsd *n);

/* Stops the server if running, then starts it again on the same port with
 * the same store and waits until it is ready (a cluster node: rejoins its
 * cluster). */
ch_status natsd_restart(natsd *n);

/* Stops the server, removes the temp dir (unless store_dir was given) and
 * frees n. Accepts NULL. */
void natsd_destroy(natsd *n);

/* ---- a cluster: what production runs ---- */

#define NATSD_CLUSTER_MAX 5

typedef struct natsd_cluster natsd_cluster;

/* Starts `nodes` nats-servers (each as natsd_start would, named n0, n1, ...)
 * routed into one cluster, and returns once every node answers /healthz (in
 * contact with an elected meta leader). Streams created on it may have up to
 * `nodes` replicas. Each node can be stopped, killed and restarted on its
 * own through natsd_cluster_node. CH_INVALID_ARGUMENT for nodes outside
 * 1..NATSD_CLUSTER_MAX. The caller owns the cluster (natsd_cluster_destroy). */
ch_status natsd_cluster_start(natsd_cluster **out, int nodes);

/* The client URLs of every node, comma-separated: what CHOREO_NATS_URL holds
 * in production. Lives as long as c. */
const char *natsd_cluster_urls(const natsd_cluster *c);

int natsd_cluster_size(const natsd_cluster *c);

/* Node i (0-based), or NULL; owned by the cluster. */
natsd *natsd_cluster_node(const natsd_cluster *c, int i);

/* Stops every node and removes their directories. Accepts NULL. */
void natsd_cluster_destroy(natsd_cluster *c);

#endif
