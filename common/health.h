/* health.h: the grpc.health.v1.Health service (Check and Watch) over the
 * rpc_server runtime.
 *
 * The health object holds a serving flag per service name; "" stands for the
 * whole server and is known, SERVING, from creation. Other names become known
 * the first time health_set names them. Check answers SERVING / NOT_SERVING,
 * or fails NOT_FOUND for an unknown name; Watch sends the current status at
 * once (SERVICE_UNKNOWN for an unknown name, without ending the call) and then
 * every change, until the client cancels or the server stops. A service name
 * over HEALTH_MAX_SERVICE bytes or not UTF-8 gets INVALID_ARGUMENT.
 *
 * Ownership: the caller owns the health object; it must outlive the server it
 * is registered on (destroy the server first). health_set and
 * health_serving may be called from any thread. */
#ifndef CHOREO_HEALTH_H
#define CHOREO_HEALTH_H

#include <stdbool.h>

#include "rpc_server.h"
#include "status.h"

#define HEALTH_MAX_SERVICE  200 /* longest service name, in bytes */
#define HEALTH_MAX_SERVICES 64  /* distinct names health_set accepts */

typedef struct health health;

/* Creates a health object with "" SERVING. Any thread. */
ch_status health_create(health **out);

/* Frees h. Accepts NULL. Only once no server uses it any more. */
void health_destroy(health *h);

/* Registers /grpc.health.v1.Health/Check (unary) and
 * /grpc.health.v1.Health/Watch (server stream) on s, before
 * rpc_server_start. */
ch_status health_register(health *h, rpc_server *s);

/* Sets the status of `service` ("" or NULL: the whole server) and wakes the
 * watchers. Any thread; takes one mutex briefly and never allocates, so it is
 * safe in a NATS connection callback. A name over HEALTH_MAX_SERVICE bytes,
 * or a new name past HEALTH_MAX_SERVICES, is ignored with a warning. */
void health_set(health *h, const char *service, bool serving);

/* True when `service` ("" or NULL: the whole server) is known and SERVING.
 * Any thread. */
bool health_serving(health *h, const char *service);

#endif
