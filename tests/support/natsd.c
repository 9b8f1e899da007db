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
    /* a node of a cluster (natsd_cluster_start): cluster_port 0 otherwise */
    int cluster_port;
    char server_name[16];
    char routes[512];
};

struct natsd_cluster {
    int n;
    natsd *nodes[NATSD_CLUSTER_MAX];
    char urls[NATSD_CLUSTER_MAX * 32];
};

/* One GET of /healthz?js-enabled-only=true (a single server) or /healthz
 * (a cluster node: also in contact with the meta leader and current with
 * the streams it holds); true on HTTP 200. */
static bool natsd__healthy(int http_port, bool cluster)
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
        const char *req = cluster ? "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
                                  : "GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if (write(fd, req, strlen(req)) == (ssize_t)strlen(req)) {
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

/* Starts the process without waiting for it. */
static ch_status natsd__spawn(natsd *n)
{
    const char *bin = getenv("CHOREO_NATS_SERVER");
    if (!bin || !*bin) {
        bin = NATSD_DEFAULT_BIN;
    }
    char port[16], http_port[16], cluster[64];
    snprintf(port, sizeof port, "%d", n->port);
    snprintf(http_port, sizeof http_port, "%d", n->http_port);
    snprintf(cluster, sizeof cluster, "nats://127.0.0.1:%d", n->cluster_port);
    /* a single server's arguments end at the NULL in place of --server_name */
    const char *argv[] = {bin,
                          "-a",
                          "127.0.0.1",
                          "-p",
                          port,
                          "-m",
                          http_port,
                          "-js",
                          "-sd",
                          n->store,
                          "-l",
                          n->log_path,
                          n->cluster_port ? "--server_name" : NULL,
                          n->server_name,
                          "--cluster_name",
                          "choreo-test",
                          "--cluster",
                          cluster,
                          "--routes",
                          n->routes,
                          NULL};
    return proc_spawn(&n->server, argv, NULL, n->log_path);
}

/* Waits until the server answers its health check (or gives up, stops it
 * and prints its log). */
static ch_status natsd__wait_ready(natsd *n)
{
    long long deadline = test_now_ms() + n->start_timeout_ms;
    while (test_now_ms() < deadline) {
        if (!proc_running(n->server)) {
            fprintf(stderr, "natsd: nats-server exited during start-up\n");
            natsd__dump_log(n);
            return CH_UNAVAILABLE;
        }
        if (natsd__accepts(n->port) && natsd__healthy(n->http_port, n->cluster_port != 0)) {
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

static ch_status natsd__launch(natsd *n)
{
    ch_status st = natsd__spawn(n);
    return st == CH_OK ? natsd__wait_ready(n) : st;
}

/* Allocates n and its temporary directory; ports are the caller's to set. */
static ch_status natsd__new(natsd **out, const natsd_options *o)
{
    natsd *n = calloc(1, sizeof *n);
    if (!n) {
        return CH_NO_MEMORY;
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
    *out = n;
    return CH_OK;
}

ch_status natsd_start(natsd **out, const natsd_options *o)
{
    natsd_options def = {0};
    natsd *n = NULL;
    *out = NULL;
    if (!o) {
        o = &def;
    }
    ch_status st = natsd__new(&n, o);
    if (st != CH_OK) {
        return st;
    }
    int ports[2] = {-1, -1};
    test_free_ports(ports, 2);
    n->port = o->port > 0 ? o->port : ports[0];
    n->http_port = ports[1] == n->port ? ports[0] : ports[1];
    snprintf(n->url, sizeof n->url, "nats://127.0.0.1:%d", n->port);
    st = natsd__launch(n);
    if (st != CH_OK) {
        natsd_destroy(n);
        return st;
    }
    *out = n;
    return CH_OK;
}

ch_status natsd_cluster_start(natsd_cluster **out, int nodes)
{
    natsd_options o = {.start_timeout_ms = 30000}; /* a meta leader is elected first */
    int ports[NATSD_CLUSTER_MAX * 3];
    ch_status st = CH_OK;

    *out = NULL;
    if (nodes < 1 || nodes > NATSD_CLUSTER_MAX || !test_free_ports(ports, nodes * 3)) {
        return CH_INVALID_ARGUMENT;
    }
    natsd_cluster *c = calloc(1, sizeof *c);
    if (!c) {
        return CH_NO_MEMORY;
    }
    c->n = nodes;
    for (int i = 0; i < nodes && st == CH_OK; i++) {
        st = natsd__new(&c->nodes[i], &o);
    }
    for (int i = 0; i < nodes && st == CH_OK; i++) {
        natsd *n = c->nodes[i];
        n->port = ports[3 * i];
        n->http_port = ports[3 * i + 1];
        n->cluster_port = ports[3 * i + 2];
        snprintf(n->server_name, sizeof n->server_name, "n%d", i);
        snprintf(n->url, sizeof n->url, "nats://127.0.0.1:%d", n->port);
        size_t len = strlen(c->urls);
        snprintf(c->urls + len, sizeof c->urls - len, "%s%s", i ? "," : "", n->url);
        for (int j = 0; j < nodes; j++) {
            len = strlen(n->routes);
            if (j != i) {
                snprintf(n->routes + len, sizeof n->routes - len, "%snats://127.0.0.1:%d", len ? "," : "",
                         ports[3 * j + 2]);
            }
        }
    }
    /* all at once: a node is ready only once a quorum elected a meta leader */
    for (int i = 0; i < nodes && st == CH_OK; i++) {
        st = natsd__spawn(c->nodes[i]);
    }
    for (int i = 0; i < nodes && st == CH_OK; i++) {
        st = natsd__wait_ready(c->nodes[i]);
    }
    if (st != CH_OK) {
        natsd_cluster_destroy(c);
        return st;
    }
    *out = c;
    return CH_OK;
}

const char *natsd_cluster_urls(const natsd_cluster *c)
{
    return c->urls;
}

int natsd_cluster_size(const natsd_cluster *c)
{
    return c->n;
}

natsd *natsd_cluster_node(const natsd_cluster *c, int i)
{
    return i >= 0 && i < c->n ? c->nodes[i] : NULL;
}

void natsd_cluster_destroy(natsd_cluster *c)
{
    if (!c) {
        return;
    }
    for (int i = 0; i < c->n; i++) {
        natsd_destroy(c->nodes[i]);
    }
    free(c);
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
