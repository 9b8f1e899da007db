/* config.c: environment variables into a typed struct, checked once. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "url_list.h"
#include "utf8.h"

static const char *source_getenv(const char *name, void *arg)
{
    (void)arg;
    return getenv(name);
}

static ch_status parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return CH_OK;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return CH_OK;
        }
    }
    return CH_INVALID_ARGUMENT;
}

static ch_status load_field(void *out, const config_field *f, const char *v, char *err, size_t errlen)
{
    char *dst = (char *)out + f->offset;
    url_list list;
    char why[160];

    if (f->type == CONFIG_URL_LIST && url_list_parse(v, &list, why, sizeof why) != CH_OK) {
        snprintf(err, errlen, "%s: \"%.64s\" is not a list of NATS server URLs: %s", f->env, v, why);
        return CH_INVALID_ARGUMENT;
    }
    switch (f->type) {
    case CONFIG_URL_LIST: /* checked below, kept as the text it is */
    case CONFIG_STRING: {
        size_t len = strlen(v);
        if (len >= f->cap || (long)len < f->min || !utf8_valid(v, len)) {
            snprintf(err, errlen, "%s: \"%.64s\" is not %sUTF-8 text of at most %zu bytes", f->env, v,
                     f->min > 0 ? "non-empty " : "", f->cap - 1);
            return CH_INVALID_ARGUMENT;
        }
        memcpy(dst, v, len + 1);
        return CH_OK;
    }
    case CONFIG_INT: {
        char *end;
        errno = 0;
        long n = strtol(v, &end, 10);
        /* strtol skips leading blanks; reject them like trailing ones. */
        if (errno || end == v || *end != '\0' || isspace((unsigned char)*v) || n < f->min || n > f->max) {
            snprintf(err, errlen, "%s: \"%.64s\" is not a whole number in %ld..%ld", f->env, v, f->min,
                     f->max);
            return CH_INVALID_ARGUMENT;
        }
        *(int *)dst = (int)n;
        return CH_OK;
    }
    case CONFIG_BOOL:
        if (parse_bool(v, (bool *)dst) != CH_OK) {
            snprintf(err, errlen, "%s: \"%.64s\" is not true/false (1/0, yes/no, on/off)", f->env, v);
            return CH_INVALID_ARGUMENT;
        }
        return CH_OK;
    case CONFIG_LOG_LEVEL:
        if (log_level_parse(v, (log_level *)dst) != CH_OK) {
            snprintf(err, errlen, "%s: \"%.64s\" is not one of debug, info, warn, error", f->env, v);
            return CH_INVALID_ARGUMENT;
        }
        return CH_OK;
    }
    snprintf(err, errlen, "%s: unknown field type", f->env);
    return CH_INTERNAL;
}

ch_status config_load(void *out, const config_field *fields, size_t n, config_source_fn src, void *arg,
                      char *err, size_t errlen)
{
    if (!src)
        src = source_getenv;
    for (size_t i = 0; i < n; i++) {
        const char *v = src(fields[i].env, arg);
        if (!v)
            v = fields[i].def ? fields[i].def : "";
        ch_status s = load_field(out, &fields[i], v, err, errlen);
        if (s != CH_OK)
            return s;
    }
    return CH_OK;
}

void config_usage(FILE *f, const config_field *fields, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const config_field *c = &fields[i];
        fprintf(f, "  %-28s %s (default \"%s\"", c->env, c->help ? c->help : "", c->def ? c->def : "");
        if (c->type == CONFIG_INT)
            fprintf(f, ", %ld..%ld", c->min, c->max);
        fprintf(f, ")\n");
    }
}

#define SC(member) offsetof(service_config, member)

size_t service_config_fields(config_field *out, size_t cap, const char *default_listen_addr)
{
    const config_field fields[] = {
        {"CHOREO_LISTEN_ADDR", CONFIG_STRING, SC(listen_addr), sizeof(((service_config *)0)->listen_addr),
         default_listen_addr, 1, 0, "host:port the gRPC server binds"},
        {"CHOREO_NATS_URL", CONFIG_URL_LIST, SC(nats_url), sizeof(((service_config *)0)->nats_url),
         "nats://127.0.0.1:4222", 1, 0, "NATS server URL(s), comma-separated"},
        {"CHOREO_LOG_LEVEL", CONFIG_LOG_LEVEL, SC(log_level), 0, "info", 0, 0, "debug, info, warn or error"},
        {"CHOREO_RPC_WORKERS", CONFIG_INT, SC(rpc_workers), 0, "2", 1, 64,
         "gRPC worker threads (one completion queue each)"},
        {"CHOREO_MAX_MESSAGE_BYTES", CONFIG_INT, SC(max_message_bytes), 0, "65536", 1024, 16777216,
         "largest gRPC message accepted or sent"},
        {"CHOREO_MAX_STREAMS", CONFIG_INT, SC(max_streams), 0, "64", 1, 4096, "concurrent streaming calls"},
        {"CHOREO_SHUTDOWN_GRACE_MS", CONFIG_INT, SC(shutdown_grace_ms), 0, "5000", 0, 600000,
         "time in-flight calls get to finish on SIGTERM"},
        {"CHOREO_PUBLISH_TIMEOUT_MS", CONFIG_INT, SC(publish_timeout_ms), 0, "5000", 10, 600000,
         "longest wait for a JetStream PubAck"},
        {"CHOREO_STREAM_REPLICAS", CONFIG_INT, SC(stream_replicas), 0, "1", 1, 5,
         "replicas of the event stream (3 on a NATS cluster)"},
        {"CHOREO_STREAM_MAX_AGE_S", CONFIG_INT, SC(stream_max_age_s), 0, "0", 0, 315360000,
         "oldest event kept, in seconds; 0 keeps all"},
    };
    size_t n = sizeof fields / sizeof fields[0];
    for (size_t i = 0; i < n && i < cap; i++)
        out[i] = fields[i];
    return n;
}
