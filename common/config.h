/* config.h: configuration from environment variables, read once into a typed
 * struct and range-checked.
 *
 * A service describes its settings as a table of config_field (variable name,
 * type, place in its struct, default, range). config_load reads them all at
 * start-up; on the first bad value it fails with a message that names the
 * variable, the value and the accepted range. Nothing reads the environment
 * afterwards: the struct is passed to whoever needs it. */
#ifndef CHOREO_CONFIG_H
#define CHOREO_CONFIG_H

#include <stddef.h>
#include <stdio.h>

#include "log.h"
#include "status.h"

typedef enum config_type {
    CONFIG_STRING,    /* char[cap] in the struct; length 1..cap-1 unless min == 0 */
    CONFIG_INT,       /* int, min..max */
    CONFIG_BOOL,      /* bool: true/false/1/0/yes/no/on/off */
    CONFIG_LOG_LEVEL, /* log_level: debug/info/warn/error */
    CONFIG_URL_LIST,  /* char[cap]: a comma-separated list of NATS server URLs (url_list.h) */
} config_type;

typedef struct config_field {
    const char *env; /* e.g. "CHOREO_NATS_URL" */
    config_type type;
    size_t offset;    /* offsetof(struct, member) */
    size_t cap;       /* CONFIG_STRING: size of the char array */
    const char *def;  /* default as text, as if it came from the environment */
    long min, max;    /* CONFIG_INT: range; CONFIG_STRING: min length (0 or 1) */
    const char *help; /* one line for --help */
} config_field;

/* Where values come from: getenv in production, a table in tests. Returns
 * NULL for unset. */
typedef const char *(*config_source_fn)(const char *name, void *arg);

/* Fills `out` from the fields' variables (unset: the default). On error
 * writes "CHOREO_X: ..." into err and returns CH_INVALID_ARGUMENT; `out` may
 * then be partly filled and must not be used. src NULL means getenv. */
ch_status config_load(void *out, const config_field *fields, size_t n, config_source_fn src, void *arg,
                      char *err, size_t errlen);

/* Prints one line per variable: name, default, range, help. */
void config_usage(FILE *f, const config_field *fields, size_t n);

/* What every choreo service reads; the service's main adds its own fields. */
typedef struct service_config {
    char listen_addr[128];  /* CHOREO_LISTEN_ADDR, host:port for gRPC */
    char nats_url[512];     /* CHOREO_NATS_URL, comma-separated list allowed */
    log_level log_level;    /* CHOREO_LOG_LEVEL */
    int rpc_workers;        /* CHOREO_RPC_WORKERS */
    int max_message_bytes;  /* CHOREO_MAX_MESSAGE_BYTES */
    int max_streams;        /* CHOREO_MAX_STREAMS */
    int shutdown_grace_ms;  /* CHOREO_SHUTDOWN_GRACE_MS */
    int publish_timeout_ms; /* CHOREO_PUBLISH_TIMEOUT_MS */
    int stream_replicas;    /* CHOREO_STREAM_REPLICAS: 1, or 3 on a NATS cluster */
    int stream_max_age_s;   /* CHOREO_STREAM_MAX_AGE_S: 0 keeps events forever */
} service_config;

/* The service_config fields, with default_port in CHOREO_LISTEN_ADDR's
 * default. Writes up to cap fields into out and returns how many there are. */
size_t service_config_fields(config_field *out, size_t cap, const char *default_listen_addr);

#endif
