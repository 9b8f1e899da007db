/* proc.h: child processes for tests (nats-server, the services).
 *
 * A proc is a spawned child with a fresh signal mask and default signal
 * dispositions, its stdout and stderr appended to a log file. The caller owns
 * the proc and frees it with proc_destroy, which kills a child still running,
 * so a failing test never leaves processes behind. Stopping is always by PID.
 * Threads: one proc is used from one thread at a time. */
#ifndef CHOREO_TEST_PROC_H
#define CHOREO_TEST_PROC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "status.h"

typedef struct proc proc;

/* Spawns argv[0] (a path; PATH is not searched unless it has no '/') with
 * argv, the current environment plus env_add ("K=V" entries overriding
 * variables of the same name; NULL-terminated, may be NULL), stdout and
 * stderr appended to log_path (NULL: inherited), stdin from /dev/null.
 * *out is owned by the caller. CH_INTERNAL if the spawn fails. */
ch_status proc_spawn(proc **out, const char *const argv[], const char *const env_add[], const char *log_path);

/* The child's PID. */
pid_t proc_pid(const proc *p);

/* Sends sig to the child if it is still running. CH_OK also when it has
 * already exited. */
ch_status proc_signal(proc *p, int sig);

/* Waits up to timeout_ms (negative: forever) for the child to exit. CH_OK and
 * *exit_status (may be NULL) = exit code, or 128 + signal number if it was
 * killed by a signal; CH_TIMEOUT if it is still running. Calling again after
 * the exit returns the same status. */
ch_status proc_wait(proc *p, int timeout_ms, int *exit_status);

/* SIGKILL and wait. */
ch_status proc_kill_and_wait(proc *p);

/* True while the child has not been reaped (non-blocking check). */
int proc_running(proc *p);

/* Kills the child if still running, reaps it and frees p. Accepts NULL. */
void proc_destroy(proc *p);

/* A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read,
 * close), or -1 on failure. */
int test_free_port(void);

/* n distinct such ports (all probes stay bound until the last is chosen, so
 * the kernel cannot hand out one twice); false on failure. For processes
 * started together, before any of them listens. */
bool test_free_ports(int *ports, int n);

/* Milliseconds on the monotonic clock (for bounded waits in tests). */
long long test_now_ms(void);

/* Sleeps ms milliseconds (the calling thread only). */
void test_sleep_ms(int ms);

/* Polls *v every 5 ms until it is >= want or timeout_ms has passed; returns
 * the last value seen (for counters a worker thread bumps). */
int test_wait_atomic(atomic_int *v, int want, int timeout_ms);

#endif
