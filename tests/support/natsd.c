/* natsd.c: a nats-server with JetStream per test, in a temporary directory. */
#include "natsd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"

#define NATSD_DEFAULT_BIN "/usr/sbin/nats-server"

struct natsd {
    proc *server;
    int port;
    int http_port;
    int start_timeout_ms;
    bool own_dir;
    char dir[512];
    char store[600];
    char log_path[600];
    char url[64];
};

/* One GET of /healthz?js-enabled-only=true; true on HTTP 200. */
static bool natsd__healthy(int http_port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return false;
    }
    bool ok = false;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)http_port);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        static const char req[] = "GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if (write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1)) {
            char buf[256];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            if (n > 0) {
                buf[n] = '\0';
                ok = strncmp(buf, "HTTP/1.", 7) == 0 && strstr(buf, " 200 ") != NULL;
            }
        }
    }
    close(fd);
    return ok;
}

/* Also checks the client port accepts connections. */
static bool natsd__accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return false;
    }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

static void natsd__dump_log(const natsd *n)
{
    FILE *f = fopen(n->log_path, "r");
    if (!f) {
        return;
    }
    char line[512];
    fprintf(stderr, "---- %s ----\n", n->log_path);
    while (fgets(line, sizeof line, f)) {
        fputs(line, stderr);
    }
    fclose(f);
}

static ch_status natsd__launch(natsd *n)
{
    const char *bin = getenv("CHOREO_NATS_SERVER");
    if (!bin || !*bin) {
        bin = NATSD_DEFAULT_BIN;
    }
    char port[16], http_port[16];
    snprintf(port, sizeof port, "%d", n->port);
    snprintf(http_port, sizeof http_port, "%d", n->http_port);
    const char *argv[] = {bin,   "-a",  "127.0.0.1", "-p", port,        "-m", http_port,
                          "-js", "-sd", n->store,    "-l", n->log_path, NULL};
    ch_status st = proc_spawn(&n->server, argv, NULL, n->log_path);
    if (st != CH_OK) {
        return st;
    }
    long long deadline = test_now_ms() + n->start_timeout_ms;
    while (test_now_ms() < deadline) {
        if (!proc_running(n->server)) {
            fprintf(stderr, "natsd: nats-server exited during start-up\n");
            natsd__dump_log(n);
            return CH_UNAVAILABLE;
        }
        if (natsd__accepts(n->port) && natsd__healthy(n->http_port)) {
            return CH_OK;
        }
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "natsd: nats-server not ready after %d ms\n", n->start_timeout_ms);
    natsd__dump_log(n);
    proc_kill_and_wait(n->server);
    proc_destroy(n->server);
    n->server = NULL;
    return CH_UNAVAILABLE;
}

ch_status natsd_start(natsd **out, const natsd_options *o)
{
    *out = NULL;
    natsd *n = calloc(1, sizeof *n);
    if (!n) {
        return CH_NO_MEMORY;
    }
    natsd_options def = {0};
    if (!o) {
        o = &def;
    }
    n->start_timeout_ms = o->start_timeout_ms > 0 ? o->start_timeout_ms : 10000;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp) {
        tmp = "/tmp";
    }
    snprintf(n->dir, sizeof n->dir, "%s/choreo-natsd-XXXXXX", tmp);
    if (!mkdtemp(n->dir)) {
        fprintf(stderr, "natsd: mkdtemp %s: %s\n", n->dir, strerror(errno));
        free(n);
        return CH_INTERNAL;
    }
    n->own_dir = true;
    if (o->store_dir) {
        snprintf(n->store, sizeof n->store, "%s", o->store_dir);
    } else {
        snprintf(n->store, sizeof n->store, "%s/store", n->dir);
    }
    snprintf(n->log_path, sizeof n->log_path, "%s/nats-server.log", n->dir);
    int ports[2] = {-1, -1};
    test_free_ports(ports, 2);
    n->port = o->port > 0 ? o->port : ports[0];
    n->http_port = ports[1] == n->port ? ports[0] : ports[1];
    snprintf(n->url, sizeof n->url, "nats://127.0.0.1:%d", n->port);
    ch_status st = natsd__launch(n);
    if (st != CH_OK) {
        natsd_destroy(n);
        return st;
    }
    *out = n;
    return CH_OK;
}

const char *natsd_url(const natsd *n)
{
    return n->url;
}

int natsd_port(const natsd *n)
{
    return n->port;
}

const char *natsd_dir(const natsd *n)
{
    return n->dir;
}

ch_status natsd_stop(natsd *n)
{
    if (!n || !n->server) {
        return CH_OK;
    }
    proc_signal(n->server, SIGTERM);
    ch_status st = proc_wait(n->server, 10000, NULL);
    if (st != CH_OK) {
        st = proc_kill_and_wait(n->server);
    }
    proc_destroy(n->server);
    n->server = NULL;
    return st;
}

ch_status natsd_kill(natsd *n)
{
    if (!n || !n->server) {
        return CH_OK;
    }
    ch_status st = proc_kill_and_wait(n->server);
    proc_destroy(n->server);
    n->server = NULL;
    return st;
}

ch_status natsd_restart(natsd *n)
{
    natsd_stop(n);
    return natsd__launch(n);
}

static int natsd__rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void natsd_destroy(natsd *n)
{
    if (!n) {
        return;
    }
    natsd_stop(n);
    if (n->own_dir && getenv("CHOREO_KEEP_NATSD_DIR") == NULL) {
        nftw(n->dir, natsd__rm, 16, FTW_DEPTH | FTW_PHYS);
    }
    free(n);
}
