/* harness.c: processes and health polling for integration tests. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grpc/health/v1/health.pb-c.h"

static ch_status spawn(svc_proc *s)
{
    char listen[96], nats[160];
    const char *env[24];
    size_t n = 0;

    snprintf(listen, sizeof listen, "CHOREO_LISTEN_ADDR=%s", s->addr);
    snprintf(nats, sizeof nats, "CHOREO_NATS_URL=%s", s->nats_url);
    env[n++] = listen;
    env[n++] = nats;
    env[n++] = "CHOREO_LOG_LEVEL=info";
    for (int i = 0; i < s->n_extra && n < 23; i++)
        env[n++] = s->extra_env[i];
    env[n] = NULL;
    const char *argv[] = {s->bin, NULL};
    return proc_spawn(&s->p, argv, env, s->log_path);
}

ch_status svc_start(svc_proc *s, const char *name, const char *bin, const char *nats_url,
                    const char *const *extra_env, int timeout_ms)
{
    const char *dir = getenv("CHOREO_TEST_LOG_DIR");
    ch_status st;

    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    snprintf(s->bin, sizeof s->bin, "%s", bin);
    snprintf(s->nats_url, sizeof s->nats_url, "%s", nats_url);
    snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", test_free_port());
    snprintf(s->log_path, sizeof s->log_path, "%s/%s.log", dir ? dir : "/tmp", name);
    remove(s->log_path);
    for (size_t i = 0; extra_env && extra_env[i] && s->n_extra < 8; i++)
        snprintf(s->extra_env[s->n_extra++], sizeof s->extra_env[0], "%s", extra_env[i]);
    st = spawn(s);
    if (st != CH_OK)
        return st;
    st = rpc_client_create(&s->client, s->addr);
    if (st != CH_OK)
        return st;
    if (!svc_wait_health(s, 1, timeout_ms)) {
        svc_dump_log(s, 20);
        return CH_TIMEOUT;
    }
    return CH_OK;
}

ch_status svc_restart(svc_proc *s, int timeout_ms)
{
    proc_destroy(s->p);
    s->p = NULL;
    ch_status st = spawn(s);
    if (st != CH_OK)
        return st;
    return svc_wait_health(s, 1, timeout_ms) ? CH_OK : CH_TIMEOUT;
}

ch_status svc_stop(svc_proc *s, int timeout_ms, int *exit_status)
{
    if (!s->p)
        return CH_NOT_FOUND;
    proc_signal(s->p, SIGTERM);
    return proc_wait(s->p, timeout_ms, exit_status);
}

ch_status svc_restart_against(svc_proc *s, const char *nats_url, int n_extra, const char *setting,
                              int timeout_ms, int *exit_status)
{
    int ignored;
    char url[sizeof s->nats_url];
    snprintf(url, sizeof url, "%s", nats_url); /* nats_url may be s->nats_url itself */
    ch_status st = svc_stop(s, timeout_ms, exit_status ? exit_status : &ignored);
    if (st != CH_OK)
        return st;
    snprintf(s->nats_url, sizeof s->nats_url, "%s", url);
    s->n_extra = n_extra < s->n_extra ? n_extra : s->n_extra;
    if (setting && s->n_extra < (int)(sizeof s->extra_env / sizeof s->extra_env[0]))
        snprintf(s->extra_env[s->n_extra++], sizeof s->extra_env[0], "%s", setting);
    return svc_restart(s, timeout_ms);
}

void svc_kill(svc_proc *s)
{
    if (s->p)
        proc_kill_and_wait(s->p);
}

void svc_destroy(svc_proc *s)
{
    int status;
    if (s->p && proc_running(s->p) && svc_stop(s, 10000, &status) != CH_OK)
        proc_kill_and_wait(s->p);
    proc_destroy(s->p);
    s->p = NULL;
    rpc_client_destroy(s->client);
    s->client = NULL;
}

/* Health Check through client c. */
static int health_via(rpc_client *c, int timeout_ms)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;

    req.service = (char *)"";
    if (rpc_client_call(c, "/grpc.health.v1.Health/Check", NULL, 0, &req.base,
                        &grpc__health__v1__health_check_response__descriptor, &resp, timeout_ms,
                        NULL) != CH_OK)
        return -1;
    int status = (int)((Grpc__Health__V1__HealthCheckResponse *)resp)->status;
    protobuf_c_message_free_unpacked(resp, NULL);
    return status;
}

int svc_health(svc_proc *s, int timeout_ms)
{
    return health_via(s->client, timeout_ms);
}

bool svc_wait_health(svc_proc *s, int want, int timeout_ms)
{
    long long end = test_now_ms() + timeout_ms;
    do {
        /* A fresh channel per probe: one that failed to connect backs off for
         * seconds before trying again. (s->client may be in use by other
         * threads of the test, so it is left alone.) */
        rpc_client *probe = NULL;
        int got = rpc_client_create(&probe, s->addr) == CH_OK ? health_via(probe, 500) : -1;
        rpc_client_destroy(probe);
        if (got == want)
            return true;
        test_sleep_ms(50);
    } while (test_now_ms() < end);
    return false;
}

void svc_dump_log(const svc_proc *s, int lines)
{
    char cmd[600];
    fprintf(stderr, "---- last lines of %s ----\n", s->log_path);
    snprintf(cmd, sizeof cmd, "tail -n %d '%s' 1>&2", lines, s->log_path);
    if (system(cmd) != 0)
        fprintf(stderr, "(no log)\n");
}
