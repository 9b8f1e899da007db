/* harness.h: what integration tests share: a real nats-server, real service
 * binaries started as processes, a gRPC client, health polling.
 *
 * Ownership: the test owns every handle and frees it with the matching
 * stop/destroy; paths are copied. Single-threaded use except where noted. */
#ifndef CHOREO_TEST_HARNESS_H
#define CHOREO_TEST_HARNESS_H

#include <stdbool.h>

#include "natsd.h"
#include "proc.h"
#include "rpc_client.h"

typedef struct svc_proc {
    char name[32];
    char bin[512];
    char addr[64]; /* 127.0.0.1:PORT */
    char log_path[512];
    char nats_url[128];
    char extra_env[8][128]; /* the extra "K=V" settings, kept for restarts */
    int n_extra;
    proc *p;
    rpc_client *client;
} svc_proc;

/* Starts `bin` as service `name` on a free port against nats_url with the
 * given extra "K=V" settings (NULL-terminated, may be NULL), and waits until
 * its health check says SERVING (timeout_ms). Logs go to
 * $CHOREO_TEST_LOG_DIR/<name>.log (or /tmp). */
ch_status svc_start(svc_proc *s, const char *name, const char *bin, const char *nats_url,
                    const char *const *extra_env, int timeout_ms);

/* Starts the same service again on the same port and settings (after a
 * stop or kill). */
ch_status svc_restart(svc_proc *s, int timeout_ms);

/* Stops the service (SIGTERM; *exit_status, may be NULL, gets how it
 * ended), points it at nats_url with its first n_extra settings plus
 * `setting` ("K=V", may be NULL), and starts it again on the same port.
 * nats_url may be s->nats_url, to restart with another setting alone.
 * Tests use it to put a service behind a relay and back. */
ch_status svc_restart_against(svc_proc *s, const char *nats_url, int n_extra, const char *setting,
                              int timeout_ms, int *exit_status);

/* SIGTERM and wait; *exit_status gets the exit code (or -signal). */
ch_status svc_stop(svc_proc *s, int timeout_ms, int *exit_status);

/* SIGKILL and wait. */
void svc_kill(svc_proc *s);

/* Stops if running and frees the client. */
void svc_destroy(svc_proc *s);

/* Health Check of service "" : 1 SERVING, 2 NOT_SERVING, -1 no answer. */
int svc_health(svc_proc *s, int timeout_ms);

/* Polls health until it equals want or timeout_ms passes. */
bool svc_wait_health(svc_proc *s, int want, int timeout_ms);

/* Prints the last lines of the service's log (on failure, for the reader). */
void svc_dump_log(const svc_proc *s, int lines);

#endif
