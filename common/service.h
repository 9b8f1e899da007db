/* service.h: what every choreo service's main() does, once.
 *
 * A service's main reads its configuration (service_boot handles --help and
 * --check-config), connects the bus (health follows the NATS link),
 * provisions the streams, wires its own handlers, and then
 * service_serve() registers health and reflection, starts gRPC and waits for
 * SIGTERM/SIGINT. service_shutdown() stops gRPC first (draining in-flight
 * calls), then the bus, and frees everything.
 *
 * Ownership: the service_runtime owns its bus, health and server; the caller
 * owns the runtime struct itself (usually on main's stack). Main thread only. */
#ifndef CHOREO_SERVICE_H
#define CHOREO_SERVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "bus.h"
#include "config.h"
#include "health.h"
#include "rpc_server.h"
#include "writer.h"

typedef struct service_runtime {
    const char *name;         /* "orders" */
    const char *grpc_service; /* "choreo.orders.v1.Orders": health reports it too */
    service_config cfg;
    health *health;
    bus *bus;
    rpc_server *server;
} service_runtime;

/* Blocks signals, reads the configuration from the environment and sets up
 * logging. Handles `--help` (prints the variables) and `--check-config`
 * (validates, prints the verdict). Returns -1 to go on, or the exit code
 * main should return (0 for help / a valid config, 2 for a bad config or
 * unknown arguments). */
int service_boot(service_runtime *rt, int argc, char **argv, const char *name, const char *grpc_service,
                 const char *default_listen_addr);

/* Creates the bus (health NOT_SERVING until the link is up) and provisions the
 * event and dead-letter streams, retrying while NATS is unreachable. Returns
 * CH_CANCELLED when SIGTERM/SIGINT arrives while waiting. */
ch_status service_connect(service_runtime *rt);

/* Creates the gRPC server; the caller then registers its own methods on
 * rt->server. */
ch_status service_create_server(service_runtime *rt);

/* Registers health and reflection, starts the server, logs the address and
 * blocks until SIGTERM/SIGINT; then shuts gRPC down gracefully. */
ch_status service_serve(service_runtime *rt);

/* Frees the server, bus and health (each may be NULL). */
void service_shutdown(service_runtime *rt);

/* Answers a call whose write to NATS (its event) was not
 * confirmed, with st from the bus, so that the client knows the write may
 * have happened all the same (NATS may have stored it and its answer was
 * lost or late): CH_TIMEOUT gives DEADLINE_EXCEEDED, "<what> not confirmed
 * in time: it may have happened; <retry>"; anything else UNAVAILABLE,
 * "<what> not confirmed: NATS unavailable (<status>); <retry>". retry says
 * how to retry safely, e.g. "retry with the same idempotency_key". Any
 * thread, once per call. */
void service_fail_unconfirmed(rpc_call *call, ch_status st, const char *what, const char *retry);

/* ---- a gRPC call carried through the service's writer (writer.h) ----
 *
 * A handler checks the request on the gRPC thread, then hands the call to
 * the writer (service_call_new, service_call_submit); the writer's decide()
 * prepares the answer and its finish() sends it, or words the failure
 * (service_call_answer, then the service's own words for the rest).
 *
 * Every input a service submits to its writer is a service_call: a service
 * whose calls carry more embeds it as the first member of its own struct,
 * so in->call points to both. Ownership: the writer's, from
 * service_call_submit until finish(), which frees it (free()). */

#define SERVICE_CALL_ERR_MAX 256

typedef struct service_call {
    rpc_call *call;                 /* NULL for an input that is not a gRPC call */
    int method;                     /* which call, in the service's own enum */
    const ProtobufCMessage *req;    /* valid until the call is answered */
    char err[SERVICE_CALL_ERR_MAX]; /* why a decision refused it ("" if none) */
} service_call;

/* Allocates size bytes, zeroed (size >= sizeof(service_call): the struct
 * that embeds it first), with the service_call filled in. When out of
 * memory answers the call itself (CH_NO_MEMORY, "out of memory") and
 * returns NULL. The caller owns the result until service_call_submit (or
 * free()s it). gRPC thread. */
void *service_call_new(size_t size, rpc_call *call, int method, const ProtobufCMessage *req);

/* Hands sc to the writer (writer_submit), which owns it from then on. When
 * the writer is stopping, answers UNAVAILABLE "the service is stopping:
 * retry on another replica" itself and frees sc. gRPC thread. */
void service_call_submit(writer *w, service_call *sc);

/* The answers every service gives in finish(), for what the writer reports
 * (st) about a call:
 *   CH_OK                    the answer decide() prepared (rpc_call_send_prepared)
 *   CH_INVALID_ARGUMENT, CH_FAILED_PRECONDITION, CH_NOT_FOUND with sc->err
 *                            set: a decision refused it; st with sc->err
 *   CH_TIMEOUT, CH_UNAVAILABLE
 *                            a write (write names it: "credit", "SetStock"):
 *                            service_fail_unconfirmed(call, st, write, retry);
 *                            a read (write NULL): UNAVAILABLE "state not
 *                            confirmed current: NATS unavailable (<st>); retry"
 * and returns true; for anything else (lost races, the writer stopping, no
 * memory) answers nothing and returns false: the service words it. Frees
 * nothing. Writer thread, from finish(). */
bool service_call_answer(const service_call *sc, ch_status st, const char *write, const char *retry);

#endif
