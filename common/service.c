/* service.c: the start-up and shut-down every choreo service shares. */
#include "service.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event_bus.h"
#include "log.h"
#include "reflection.h"

extern const unsigned char choreo_descriptor_set[];
extern const unsigned long choreo_descriptor_set_len;

#define SERVICE_MAX_FIELDS 32

static void usage(FILE *f, const char *name, const config_field *fields, size_t n)
{
    fprintf(f,
            "usage: choreo-%s [--help | --check-config]\n"
            "Configuration is read from these environment variables:\n",
            name);
    config_usage(f, fields, n);
}

int service_boot(service_runtime *rt, int argc, char **argv, const char *name, const char *grpc_service,
                 const char *default_listen_addr)
{
    config_field fields[SERVICE_MAX_FIELDS];
    size_t n = service_config_fields(fields, SERVICE_MAX_FIELDS, default_listen_addr);
    char err[256];
    bool check_only = false;

    memset(rt, 0, sizeof *rt);
    rt->name = name;
    rt->grpc_service = grpc_service;
    rpc_block_signals();
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout, name, fields, n);
            return 0;
        }
        if (strcmp(argv[i], "--check-config") == 0) {
            check_only = true;
            continue;
        }
        fprintf(stderr, "choreo-%s: unknown argument \"%s\"\n", name, argv[i]);
        usage(stderr, name, fields, n);
        return 2;
    }
    if (config_load(&rt->cfg, fields, n, NULL, NULL, err, sizeof err) != CH_OK) {
        fprintf(stderr, "choreo-%s: bad configuration: %s\n", name, err);
        return 2;
    }
    if (check_only) {
        printf("choreo-%s: configuration is valid (listen %s, nats %s)\n", name, rt->cfg.listen_addr,
               rt->cfg.nats_url);
        return 0;
    }
    log_configure(name, rt->cfg.log_level, 2);
    return -1;
}

/* The bus tells us about the NATS link on its own thread; health_set is quick. */
static void on_bus_state(bool up, void *arg)
{
    service_runtime *rt = arg;
    health_set(rt->health, "", up);
    health_set(rt->health, rt->grpc_service, up);
    log_at(up ? LOG_INFO : LOG_WARN, up ? "nats link up" : "nats link down", NULL);
}

/* True when SIGTERM or SIGINT is pending (signals are blocked, so it waits). */
static bool stop_requested(void)
{
    sigset_t set;
    struct timespec zero = {0, 0};

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    return sigtimedwait(&set, NULL, &zero) > 0;
}

ch_status service_connect(service_runtime *rt)
{
    bus_options bo = {0};
    ch_status st;
    int wait_ms = 100;

    st = health_create(&rt->health);
    if (st != CH_OK)
        return st;
    health_set(rt->health, "", false);
    health_set(rt->health, rt->grpc_service, false);

    bo.url = rt->cfg.nats_url;
    bo.name = rt->name;
    bo.publish_timeout_ms = rt->cfg.publish_timeout_ms;
    bo.on_state = on_bus_state;
    bo.on_state_arg = rt;
    st = bus_create(&rt->bus, &bo);
    if (st != CH_OK) {
        log_error("cannot create the NATS connection", "url", rt->cfg.nats_url, "status", ch_status_str(st),
                  NULL);
        return st;
    }
    /* NATS may start after us (kind, make up): provision once it answers. */
    for (;;) {
        st = event_bus_ensure_streams(rt->bus, rt->cfg.stream_replicas,
                                      (int64_t)rt->cfg.stream_max_age_s * 1000);
        if (st == CH_OK)
            break;
        if (st != CH_UNAVAILABLE && st != CH_TIMEOUT) {
            log_error("cannot provision the event streams", "status", ch_status_str(st), NULL);
            return st;
        }
        log_warn("waiting for NATS JetStream", "url", rt->cfg.nats_url, "status", ch_status_str(st), NULL);
        for (int slept = 0; slept < wait_ms; slept += 50) {
            if (stop_requested())
                return CH_CANCELLED;
            nanosleep(&(struct timespec){0, 50 * 1000000L}, NULL);
        }
        if (wait_ms < 2000)
            wait_ms *= 2;
    }
    /* Provisioning answered, so the link is up; the callback may have fired
     * before health was wired, so set it here too (quietly). */
    health_set(rt->health, "", bus_connected(rt->bus));
    health_set(rt->health, rt->grpc_service, bus_connected(rt->bus));
    return CH_OK;
}

ch_status service_create_server(service_runtime *rt)
{
    rpc_server_options so = {
        .listen_addr = rt->cfg.listen_addr,
        .workers = rt->cfg.rpc_workers,
        .max_message_bytes = rt->cfg.max_message_bytes,
        .max_streams = rt->cfg.max_streams,
        .grace_ms = rt->cfg.shutdown_grace_ms,
    };
    return rpc_server_create(&rt->server, &so);
}

ch_status service_serve(service_runtime *rt)
{
    reflection *refl = NULL;
    ch_status st;

    st = health_register(rt->health, rt->server);
    if (st == CH_OK)
        st = reflection_create(&refl, choreo_descriptor_set, choreo_descriptor_set_len);
    if (st == CH_OK)
        st = reflection_register(refl, rt->server);
    if (st == CH_OK)
        st = rpc_server_start(rt->server);
    if (st != CH_OK) {
        log_error("cannot start the gRPC server", "listen", rt->cfg.listen_addr, "status", ch_status_str(st),
                  NULL);
        goto cleanup;
    }
    int sig = rpc_server_run(rt->server);
    log_info("stopped", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", NULL);

cleanup:
    rpc_server_destroy(rt->server);
    rt->server = NULL;
    reflection_destroy(refl);
    return st;
}

void service_shutdown(service_runtime *rt)
{
    rpc_server_destroy(rt->server);
    rt->server = NULL;
    bus_destroy(rt->bus);
    rt->bus = NULL;
    health_destroy(rt->health);
    rt->health = NULL;
    bus_library_shutdown();
}

void service_fail_unconfirmed(rpc_call *call, ch_status st, const char *what, const char *retry)
{
    if (st == CH_TIMEOUT)
        rpc_call_fail(call, CH_TIMEOUT, "%s not confirmed in time: it may have happened; %s", what, retry);
    else
        rpc_call_fail(call, CH_UNAVAILABLE, "%s not confirmed: NATS unavailable (%s); %s", what,
                      ch_status_str(st), retry);
}

void *service_call_new(size_t size, rpc_call *call, int method, const ProtobufCMessage *req)
{
    service_call *sc = calloc(1, size < sizeof *sc ? sizeof *sc : size);

    if (!sc) {
        rpc_call_fail(call, CH_NO_MEMORY, "out of memory");
        return NULL;
    }
    sc->call = call;
    sc->method = method;
    sc->req = req;
    return sc;
}

void service_call_submit(writer *w, service_call *sc)
{
    if (writer_submit(w, sc) != CH_OK) {
        rpc_call_fail(sc->call, CH_UNAVAILABLE, "the service is stopping: retry on another replica");
        free(sc);
    }
}

bool service_call_answer(const service_call *sc, ch_status st, const char *write, const char *retry)
{
    switch (st) {
    case CH_OK: rpc_call_send_prepared(sc->call); return true;
    case CH_INVALID_ARGUMENT:
    case CH_FAILED_PRECONDITION:
    case CH_NOT_FOUND:
        if (!sc->err[0])
            return false; /* not a decision's refusal: nothing to tell but the status */
        rpc_call_fail(sc->call, st, "%s", sc->err);
        return true;
    case CH_TIMEOUT:
    case CH_UNAVAILABLE:
        if (write)
            service_fail_unconfirmed(sc->call, st, write, retry);
        else
            rpc_call_fail(sc->call, CH_UNAVAILABLE,
                          "state not confirmed current: NATS unavailable (%s); retry", ch_status_str(st));
        return true;
    default: return false;
    }
}
