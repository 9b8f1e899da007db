/* log.h: structured logs in logfmt, one line per record.
 *
 *   ts=2026-11-26T14:03:36.123Z level=info service=orders msg="event handled" \
 *   type=order.created order_id=ord-... outcome=ack
 *
 * The logger is configured once by main() before any thread starts and is
 * read-only afterwards, so every thread may log. Each record is written with
 * one write(2), at most LOG_LINE_MAX bytes (longer values are cut and marked
 * with "..."), so lines from concurrent threads never interleave; a thread
 * may hold its records back in a buffer of its own and write them in one
 * go (log_hold). */
#ifndef CHOREO_LOG_H
#define CHOREO_LOG_H

#include <stdbool.h>

#include "status.h"

#define LOG_LINE_MAX 2048

typedef enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Sets the service name, minimum level and output fd (2 for stderr) for the
 * process. Call before starting threads. The name is copied. */
void log_configure(const char *service, log_level min_level, int fd);

/* Parses "debug", "info", "warn" or "error" (any case). CH_INVALID_ARGUMENT
 * for anything else; *out is unchanged then. */
ch_status log_level_parse(const char *s, log_level *out);

/* True when records of this level are written; lets callers skip building
 * values that would be dropped. */
bool log_enabled(log_level level);

/* Writes one record: msg, then key/value pairs of const char * terminated by
 * NULL. A NULL value is skipped. Values are quoted and escaped as logfmt
 * needs. Any thread. */
void log_at(log_level level, const char *msg, ...);

/* Formats one line, ending with a newline, into buf[0..cap) and returns its
 * length (0 when cap <= 0). A line that does not fit is cut and ends with
 * "...\n". Exposed for tests; log_at uses it. */
int log_format(char *buf, int cap, log_level level, const char *msg, const char *const *kv, int nkv);

/* Room for the records one thread holds back (log_hold). */
#define LOG_HOLD_BYTES (4 * LOG_LINE_MAX)

typedef struct log_buffer {
    char data[LOG_HOLD_BYTES];
    int len;
} log_buffer;

/* Until log_release(b), this thread's records go into b (owned by the
 * caller) and are written together, one write(2) per LOG_HOLD_BYTES: a worker
 * writes the lines of a batch of events at once instead of one syscall per
 * line. Holds do not nest. Calling thread only. */
void log_hold(log_buffer *b);

/* Writes what b holds and ends the hold. Accepts NULL. */
void log_release(log_buffer *b);

#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  log_at(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_at(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_at(LOG_ERROR, __VA_ARGS__)

#endif
