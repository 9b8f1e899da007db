/* bench_sys.h: what both benchmarks (choreo-bench, choreo-bus-floor) measure
 * outside their own process: CPU time, context switches and peak memory of
 * other processes (from /proc), percentiles of a sample, and the monotonic
 * clock; and the parsing of their numeric flags.
 *
 * Ownership: callers own every buffer they pass; nothing here allocates
 * except where stated. Any thread. */
#ifndef CHOREO_BENCH_SYS_H
#define CHOREO_BENCH_SYS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Nanoseconds on the monotonic clock. */
long long bench_now_ns(void);

/* User + system CPU time of pid so far, in seconds (clock ticks from
 * /proc/<pid>/stat divided by sysconf(_SC_CLK_TCK)); -1 if unreadable. */
double bench_cpu_seconds(pid_t pid);

/* Context switches (voluntary + involuntary) of all of pid's threads so
 * far, summed over /proc/<pid>/task/<tid>/status; -1 if unreadable. Threads
 * that have exited no longer count. */
long long bench_ctx_switches(pid_t pid);

/* Peak resident set size of pid (VmHWM in /proc/<pid>/status) in bytes; -1
 * if unreadable (the process has gone). */
long long bench_peak_rss_bytes(pid_t pid);

/* The first child of the calling process whose command name (comm) is
 * `comm` (e.g. "nats-server"), or -1. */
pid_t bench_find_child(const char *comm);

/* True when something accepts TCP connections on 127.0.0.1:port now. */
bool bench_port_open(int port);

/* Waits (up to 3 s) until pids[0..n) together use less than 20 ms of CPU in
 * 200 ms, so that trailing work is counted and idle time hardly is. */
void bench_wait_quiet(const pid_t *pids, int n);

/* Parses s as a whole decimal number in lo..hi into *out; false (and *out
 * untouched) when it is not one. For command-line flags. */
bool bench_int_arg(const char *s, int lo, int hi, int *out);

/* Sorts v[0..n) ascending in place. */
void bench_sort(double *v, size_t n);

/* The q-quantile (0 < q <= 1) of the ascending sample v[0..n), nearest
 * rank: v[ceil(q * n) - 1]; 0 when n is 0. */
double bench_quantile(const double *sorted, size_t n, double q);

#endif
