/* log.c: logfmt records, one write(2) each. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_MAX_PAIRS 32

/* Set once by log_configure before threads start; read-only afterwards. */
static struct {
    char service[64];
    log_level min;
    int fd;
} log_cfg = {"choreo", LOG_INFO, 2};

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_configure(const char *service, log_level min_level, int fd)
{
    snprintf(log_cfg.service, sizeof log_cfg.service, "%s", service ? service : "choreo");
    log_cfg.min = min_level;
    log_cfg.fd = fd;
}

ch_status log_level_parse(const char *s, log_level *out)
{
    for (int i = 0; s && i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (log_level)i;
            return CH_OK;
        }
    }
    if (s && strcasecmp(s, "warning") == 0) {
        *out = LOG_WARN;
        return CH_OK;
    }
    return CH_INVALID_ARGUMENT;
}

bool log_enabled(log_level level)
{
    return level >= log_cfg.min;
}

/* Appends to buf[*len..cap-1]; stops silently at the cap. */
static void put(char *buf, int cap, int *len, const char *s, size_t n)
{
    if (*len >= cap)
        return;
    size_t room = (size_t)(cap - *len);
    if (n > room)
        n = room;
    memcpy(buf + *len, s, n);
    *len += (int)n;
}

static bool needs_quotes(const char *v)
{
    if (*v == '\0')
        return true;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p <= ' ' || *p == '=' || *p == '"' || *p == '\\' || *p == 0x7f)
            return true;
    return false;
}

static void put_value(char *buf, int cap, int *len, const char *v)
{
    if (!needs_quotes(v)) {
        put(buf, cap, len, v, strlen(v));
        return;
    }
    put(buf, cap, len, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)v; *p;) {
        const unsigned char *run = p;
        while (*p > ' ' && *p != '"' && *p != '\\' && *p != 0x7f)
            p++;
        while (*p == ' ')
            p++; /* plain runs, spaces included, go out in one copy */
        if (p > run) {
            put(buf, cap, len, (const char *)run, (size_t)(p - run));
            continue;
        }
        char esc[8];
        switch (*p) {
        case '"': put(buf, cap, len, "\\\"", 2); break;
        case '\\': put(buf, cap, len, "\\\\", 2); break;
        case '\n': put(buf, cap, len, "\\n", 2); break;
        case '\t': put(buf, cap, len, "\\t", 2); break;
        case '\r': put(buf, cap, len, "\\r", 2); break;
        default:
            if (*p < ' ' || *p == 0x7f) {
                int n = snprintf(esc, sizeof esc, "\\x%02x", *p);
                put(buf, cap, len, esc, (size_t)n);
            } else {
                put(buf, cap, len, (const char *)p, 1);
            }
        }
        p++;
    }
    put(buf, cap, len, "\"", 1);
}

static void put_pair(char *buf, int cap, int *len, const char *k, const char *v)
{
    put(buf, cap, len, " ", 1);
    put(buf, cap, len, k, strlen(k));
    put(buf, cap, len, "=", 1);
    put_value(buf, cap, len, v);
}

/* The date and time of the last second this thread formatted. */
static _Thread_local time_t log_ts_sec;
static _Thread_local char log_ts_date[32];

int log_format(char *buf, int cap, log_level level, const char *msg, const char *const *kv, int nkv)
{
    char ts[40];
    struct timespec now;
    struct tm tm;
    int len = 0;

    if (cap <= 0)
        return 0;
    if ((unsigned)level > LOG_ERROR)
        level = LOG_ERROR;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != log_ts_sec || !log_ts_date[0]) {
        /* A new second for this thread: format its date and time once. */
        gmtime_r(&now.tv_sec, &tm);
        strftime(log_ts_date, sizeof log_ts_date, "%Y-%m-%dT%H:%M:%S", &tm);
        log_ts_sec = now.tv_sec;
    }
    int ms = (int)(now.tv_nsec / 1000000);
    size_t n = strlen(log_ts_date);
    memcpy(ts, log_ts_date, n);
    ts[n] = '.';
    ts[n + 1] = (char)('0' + ms / 100);
    ts[n + 2] = (char)('0' + ms / 10 % 10);
    ts[n + 3] = (char)('0' + ms % 10);
    ts[n + 4] = 'Z';
    ts[n + 5] = '\0';

    put(buf, cap, &len, "ts=", 3);
    put(buf, cap, &len, ts, strlen(ts));
    put_pair(buf, cap, &len, "level", level_names[level]);
    put_pair(buf, cap, &len, "service", log_cfg.service);
    put_pair(buf, cap, &len, "msg", msg ? msg : "");
    for (int i = 0; i + 1 < nkv; i += 2)
        if (kv[i] && kv[i + 1])
            put_pair(buf, cap, &len, kv[i], kv[i + 1]);
    if (len >= cap) {
        /* Cut (no room for the newline): mark it so a reader knows the line is incomplete. */
        if (cap > 4)
            memcpy(buf + cap - 4, "...", 3);
        len = cap - 1;
    }
    buf[len++] = '\n';
    return len;
}

/* The buffer this thread holds its records in, if any (log_hold). Per
 * thread, so no lock. */
static _Thread_local log_buffer *log_held;

static void log_write(const char *p, int n)
{
    while (n > 0) {
        ssize_t w = write(log_cfg.fd, p, (size_t)n);
        if (w <= 0)
            return; /* nowhere to report a failed log write */
        p += w;
        n -= (int)w;
    }
}

void log_hold(log_buffer *b)
{
    if (b)
        b->len = 0;
    log_held = b;
}

void log_release(log_buffer *b)
{
    if (!b)
        return;
    if (b->len > 0)
        log_write(b->data, b->len);
    b->len = 0;
    if (log_held == b)
        log_held = NULL;
}

void log_at(log_level level, const char *msg, ...)
{
    const char *kv[LOG_MAX_PAIRS * 2];
    char line[LOG_LINE_MAX];
    int nkv = 0;
    va_list ap;

    if (!log_enabled(level))
        return;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k)
            break;
        const char *v = va_arg(ap, const char *);
        if (nkv < LOG_MAX_PAIRS * 2) {
            kv[nkv++] = k;
            kv[nkv++] = v;
        }
    }
    va_end(ap);
    log_buffer *b = log_held;
    if (b) {
        if (LOG_HOLD_BYTES - b->len < LOG_LINE_MAX) {
            log_write(b->data, b->len); /* full: whole lines out, keep holding */
            b->len = 0;
        }
        b->len += log_format(b->data + b->len, LOG_LINE_MAX, level, msg, kv, nkv);
        return;
    }
    int n = log_format(line, sizeof line, level, msg, kv, nkv);
    log_write(line, n);
}
