/* bench_sys.c: /proc readers, percentiles and the clock for the benchmark. */
#include "bench_sys.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

long long bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Reads /proc/<pid>/<file> into buf (NUL-terminated); bytes read or -1. */
static ssize_t bench__read_proc(pid_t pid, const char *file, char *buf, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, file);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    return (ssize_t)n;
}

/* The fields after "(comm)" of /proc/<pid>/stat: field 3 (state) first.
 * comm may hold spaces and parentheses, so look for the last ')'. */
static const char *bench__stat_rest(const char *stat)
{
    const char *p = strrchr(stat, ')');
    return p ? p + 1 : NULL;
}

double bench_cpu_seconds(pid_t pid)
{
    char buf[1024];
    unsigned long long utime = 0, stime = 0;
    long tck = sysconf(_SC_CLK_TCK);

    if (pid <= 0 || tck <= 0 || bench__read_proc(pid, "stat", buf, sizeof buf) < 0)
        return -1;
    const char *rest = bench__stat_rest(buf);
    /* fields 3..13 skipped, then 14 utime and 15 stime */
    if (!rest || sscanf(rest, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)tck;
}

long long bench_ctx_switches(pid_t pid)
{
    char dir[64], file[96], buf[4096];
    long long total = 0;

    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = pid > 0 ? opendir(dir) : NULL;
    if (!d)
        return -1;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(file, sizeof file, "task/%.32s/status", e->d_name);
        if (bench__read_proc(pid, file, buf, sizeof buf) < 0)
            continue; /* the thread has just exited */
        const char *keys[2] = {"\nvoluntary_ctxt_switches:", "\nnonvoluntary_ctxt_switches:"};
        for (int k = 0; k < 2; k++) {
            const char *p = strstr(buf, keys[k]);
            long long n = 0;
            if (p && sscanf(p + strlen(keys[k]), " %lld", &n) == 1)
                total += n;
        }
    }
    closedir(d);
    return total;
}

long long bench_peak_rss_bytes(pid_t pid)
{
    char buf[4096];
    long long kb = -1;

    if (pid <= 0 || bench__read_proc(pid, "status", buf, sizeof buf) < 0)
        return -1;
    const char *p = strstr(buf, "\nVmHWM:");
    if (!p || sscanf(p + 7, " %lld", &kb) != 1)
        return -1;
    return kb * 1024;
}

pid_t bench_find_child(const char *comm)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = -1, self = getpid();

    if (!d)
        return -1;
    while (found < 0 && (e = readdir(d)) != NULL) {
        char buf[1024], name[64];
        int ppid = 0;
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || bench__read_proc((pid_t)pid, "stat", buf, sizeof buf) < 0)
            continue;
        const char *open = strchr(buf, '('), *rest = bench__stat_rest(buf);
        if (!open || !rest || (size_t)(rest - open - 2) >= sizeof name)
            continue;
        memcpy(name, open + 1, (size_t)(rest - open - 2));
        name[rest - open - 2] = '\0';
        if (sscanf(rest, " %*c %d", &ppid) == 1 && ppid == self && strcmp(name, comm) == 0)
            found = (pid_t)pid;
    }
    closedir(d);
    return found;
}

bool bench_port_open(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return false;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static int bench__cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void bench_sort(double *v, size_t n)
{
    qsort(v, n, sizeof *v, bench__cmp_double);
}

double bench_quantile(const double *sorted, size_t n, double q)
{
    if (n == 0)
        return 0;
    double rank = ceil(q * (double)n);
    size_t k = rank < 1 ? 0 : (size_t)rank - 1;
    return sorted[k < n ? k : n - 1];
}

bool bench_int_arg(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

/* Sum of bench_cpu_seconds over pids[0..n) (unreadable ones count 0). */
static double bench__cpu_total(const pid_t *pids, int n)
{
    double t = 0;
    for (int k = 0; k < n; k++) {
        double v = bench_cpu_seconds(pids[k]);
        t += v > 0 ? v : 0;
    }
    return t;
}

void bench_wait_quiet(const pid_t *pids, int n)
{
    double prev = bench__cpu_total(pids, n);
    for (int k = 0; k < 15; k++) {
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
        double now = bench__cpu_total(pids, n);
        if (now - prev < 0.02)
            return;
        prev = now;
    }
}
