/* event_codec.c: the event envelope, encoded and checked with nanopb. */
#include "event_codec.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "utf8.h"

typedef struct event_type_info {
    const char *name;      /* "order.created" */
    pb_size_t payload_tag; /* choreo_events_v1_Envelope_*_tag */
    bool no_order;         /* keyed by a SKU or customer in the payload, order_id empty */
} event_type_info;

static const event_type_info event_types[EVENT_TYPE_COUNT] = {
    [EVENT_ORDER_CREATED] = {"order.created", choreo_events_v1_Envelope_order_created_tag},
    [EVENT_INVENTORY_RESERVED] = {"inventory.reserved", choreo_events_v1_Envelope_inventory_reserved_tag},
    [EVENT_INVENTORY_FAILED] = {"inventory.failed", choreo_events_v1_Envelope_inventory_failed_tag},
    [EVENT_PAYMENT_PROCESSED] = {"payment.processed", choreo_events_v1_Envelope_payment_processed_tag},
    [EVENT_PAYMENT_FAILED] = {"payment.failed", choreo_events_v1_Envelope_payment_failed_tag},
    [EVENT_INVENTORY_RELEASED] = {"inventory.released", choreo_events_v1_Envelope_inventory_released_tag},
    [EVENT_ORDER_CONFIRMED] = {"order.confirmed", choreo_events_v1_Envelope_order_confirmed_tag},
    [EVENT_ORDER_CANCEL_REQUESTED] = {"order.cancel_requested",
                                      choreo_events_v1_Envelope_order_cancel_requested_tag},
    [EVENT_PAYMENT_REFUNDED] = {"payment.refunded", choreo_events_v1_Envelope_payment_refunded_tag},
    [EVENT_ORDER_CANCELLED] = {"order.cancelled", choreo_events_v1_Envelope_order_cancelled_tag},
    [EVENT_NOTIFICATION_SENT] = {"notification.sent", choreo_events_v1_Envelope_notification_sent_tag},
    [EVENT_INVENTORY_COMMITTED] = {"inventory.committed", choreo_events_v1_Envelope_inventory_committed_tag},
    [EVENT_INVENTORY_STOCK_SET] = {"inventory.stock_set", choreo_events_v1_Envelope_inventory_stock_set_tag,
                                   true},
    [EVENT_INVENTORY_STOCK_ADJUSTED] = {"inventory.stock_adjusted",
                                        choreo_events_v1_Envelope_inventory_stock_adjusted_tag, true},
    [EVENT_PAYMENT_CREDITED] = {"payment.credited", choreo_events_v1_Envelope_payment_credited_tag, true},
};

bool event_type_has_order(event_type t)
{
    return (unsigned)t < EVENT_TYPE_COUNT && !event_types[t].no_order;
}

const char *event_key(const choreo_events_v1_Envelope *e)
{
    switch (e->which_payload) {
    case choreo_events_v1_Envelope_inventory_stock_set_tag: return e->payload.inventory_stock_set.sku;
    case choreo_events_v1_Envelope_inventory_stock_adjusted_tag:
        return e->payload.inventory_stock_adjusted.sku;
    case choreo_events_v1_Envelope_payment_credited_tag: return e->payload.payment_credited.customer_id;
    default: return e->order_id;
    }
}

static void event__reason(char *reason, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void event__reason(char *reason, size_t cap, const char *fmt, ...)
{
    if (!reason || cap == 0) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, cap, fmt, ap);
    va_end(ap);
}

const char *event_type_name(event_type t)
{
    if ((unsigned)t >= EVENT_TYPE_COUNT) {
        return "?";
    }
    return event_types[t].name;
}

ch_status event_type_parse(const char *name, event_type *out)
{
    if (!name) {
        return CH_INVALID_ARGUMENT;
    }
    for (int i = 0; i < EVENT_TYPE_COUNT; i++) {
        if (strcmp(name, event_types[i].name) == 0) {
            *out = (event_type)i;
            return CH_OK;
        }
    }
    return CH_INVALID_ARGUMENT;
}

pb_size_t event_type_payload_tag(event_type t)
{
    if ((unsigned)t >= EVENT_TYPE_COUNT) {
        return 0;
    }
    return event_types[t].payload_tag;
}

ch_status event_type_from_payload_tag(pb_size_t tag, event_type *out)
{
    for (int i = 0; i < EVENT_TYPE_COUNT; i++) {
        if (event_types[i].payload_tag == tag) {
            *out = (event_type)i;
            return CH_OK;
        }
    }
    return CH_INVALID_ARGUMENT;
}

ch_status event_type_of(const choreo_events_v1_Envelope *e, event_type *out)
{
    return event_type_parse(e->type, out);
}

/* The checks event_subject and event_msg_id share. */
static ch_status event__check(char *buf, size_t cap, event_type t, const char *key)
{
    if ((unsigned)t >= EVENT_TYPE_COUNT || !buf || cap == 0) {
        return CH_INVALID_ARGUMENT;
    }
    buf[0] = '\0';
    if (key && !utf8_valid_token(key, EVENT_KEY_MAX)) {
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

static ch_status event__fits(char *buf, size_t cap, int n)
{
    if (n < 0 || (size_t)n >= cap) {
        buf[0] = '\0';
        return CH_RESOURCE_EXHAUSTED;
    }
    return CH_OK;
}

ch_status event_subject(char *buf, size_t cap, event_type t, const char *key)
{
    ch_status st = event__check(buf, cap, t, key);
    if (st != CH_OK) {
        return st;
    }
    return event__fits(buf, cap, snprintf(buf, cap, "events.%s.%s", event_types[t].name, key ? key : "*"));
}

ch_status event_msg_id(char *buf, size_t cap, event_type t, const char *order_id)
{
    ch_status st = event__check(buf, cap, t, order_id);
    if (st != CH_OK) {
        return st;
    }
    if (!order_id) {
        return CH_INVALID_ARGUMENT;
    }
    return event__fits(buf, cap, snprintf(buf, cap, "%s:%s", order_id, event_types[t].name));
}

/* Copies s (NULL: empty) into dst[cap], cutting at a UTF-8 boundary. */
static void event__copy(char *dst, size_t cap, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) {
            n--;
        }
    }
    if (n > 0) {
        memcpy(dst, s, n);
    }
    dst[n] = '\0';
}

static void event__random_id(char out[EVENT_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[EVENT_ID_LEN / 2];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        got += (size_t)n;
    }
    if (got < sizeof raw) {
        /* No getrandom: fall back to the clock and a counter; unique enough
         * for ids, never used for secrets. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        static _Atomic unsigned long counter;
        unsigned long c = ++counter;
        uint64_t mix = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 48) ^ c;
        for (size_t i = 0; i < sizeof raw; i++) {
            mix = mix * 6364136223846793005ULL + 1442695040888963407ULL;
            raw[i] = (unsigned char)(mix >> 56);
        }
    }
    for (size_t i = 0; i < sizeof raw; i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 0xF];
    }
    out[EVENT_ID_LEN] = '\0';
}

ch_status event_init(choreo_events_v1_Envelope *e, event_type t, const char *order_id,
                     const char *causation_id, const char *producer, const char *traceparent)
{
    if (!e || (unsigned)t >= EVENT_TYPE_COUNT) {
        return CH_INVALID_ARGUMENT;
    }
    memset(e, 0, sizeof *e);
    event__random_id(e->event_id);
    event__copy(e->type, sizeof e->type, event_types[t].name);
    event__copy(e->order_id, sizeof e->order_id, order_id);
    event__copy(e->causation_id, sizeof e->causation_id, causation_id);
    event__copy(e->producer, sizeof e->producer, producer);
    event__copy(e->traceparent, sizeof e->traceparent, traceparent);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    e->occurred_at_unix_ns = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    e->schema_version = EVENT_SCHEMA_VERSION;
    e->which_payload = event_types[t].payload_tag;
    return CH_OK;
}

ch_status event_init_caused(choreo_events_v1_Envelope *e, event_type t,
                            const choreo_events_v1_Envelope *cause, const char *producer)
{
    return event_init(e, t, cause->order_id, cause->event_id, producer, cause->traceparent);
}

void event_trace_id(const char *traceparent, char out[33])
{
    /* "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>" */
    out[0] = '\0';
    if (!traceparent || strlen(traceparent) != 55 || traceparent[2] != '-' || traceparent[35] != '-')
        return;
    for (int i = 3; i < 35; i++)
        if (!isxdigit((unsigned char)traceparent[i]))
            return;
    memcpy(out, traceparent + 3, 32);
    out[32] = '\0';
}

/* A string member: NUL within its array, valid UTF-8. */
static bool event__str_ok(const char *s, size_t cap, const char *field, char *reason, size_t reason_cap)
{
    size_t n = strnlen(s, cap);
    if (n == cap) {
        event__reason(reason, reason_cap, "%s: not terminated", field);
        return false;
    }
    if (!utf8_valid(s, n)) {
        event__reason(reason, reason_cap, "%s: invalid UTF-8", field);
        return false;
    }
    return true;
}

#define EVENT_STR_OK(obj, member, name)                                                                      \
    event__str_ok((obj)->member, sizeof((obj)->member), (name), reason, reason_cap)

/* Every payload's strings and counts. */
static bool event__payload_ok(const choreo_events_v1_Envelope *e, char *reason, size_t reason_cap)
{
    switch (e->which_payload) {
    case choreo_events_v1_Envelope_order_created_tag: {
        const choreo_events_v1_OrderCreated *p = &e->payload.order_created;
        if (!EVENT_STR_OK(p, customer_id, "order_created.customer_id") ||
            !EVENT_STR_OK(p, idempotency_key, "order_created.idempotency_key")) {
            return false;
        }
        if (p->items_count > sizeof p->items / sizeof p->items[0]) {
            event__reason(reason, reason_cap, "order_created.items: %u items > %zu", (unsigned)p->items_count,
                          sizeof p->items / sizeof p->items[0]);
            return false;
        }
        for (pb_size_t i = 0; i < p->items_count; i++) {
            if (!EVENT_STR_OK(&p->items[i], sku, "order_created.items.sku")) {
                return false;
            }
        }
        return true;
    }
    case choreo_events_v1_Envelope_inventory_reserved_tag: {
        const choreo_events_v1_InventoryReserved *p = &e->payload.inventory_reserved;
        if (!EVENT_STR_OK(p, customer_id, "inventory_reserved.customer_id"))
            return false;
        if (p->lines_count > sizeof p->lines / sizeof p->lines[0]) {
            event__reason(reason, reason_cap, "inventory_reserved.lines: %u lines > %zu",
                          (unsigned)p->lines_count, sizeof p->lines / sizeof p->lines[0]);
            return false;
        }
        for (pb_size_t i = 0; i < p->lines_count; i++)
            if (!EVENT_STR_OK(&p->lines[i], sku, "inventory_reserved.lines.sku"))
                return false;
        return true;
    }
    case choreo_events_v1_Envelope_inventory_committed_tag: return true;
    case choreo_events_v1_Envelope_inventory_stock_set_tag:
        return EVENT_STR_OK(&e->payload.inventory_stock_set, sku, "inventory_stock_set.sku");
    case choreo_events_v1_Envelope_inventory_stock_adjusted_tag:
        return EVENT_STR_OK(&e->payload.inventory_stock_adjusted, sku, "inventory_stock_adjusted.sku") &&
               EVENT_STR_OK(&e->payload.inventory_stock_adjusted, idempotency_key,
                            "inventory_stock_adjusted.idempotency_key");
    case choreo_events_v1_Envelope_payment_credited_tag:
        return EVENT_STR_OK(&e->payload.payment_credited, customer_id, "payment_credited.customer_id") &&
               EVENT_STR_OK(&e->payload.payment_credited, idempotency_key,
                            "payment_credited.idempotency_key");
    case choreo_events_v1_Envelope_inventory_failed_tag:
        return EVENT_STR_OK(&e->payload.inventory_failed, sku, "inventory_failed.sku") &&
               EVENT_STR_OK(&e->payload.inventory_failed, reason, "inventory_failed.reason");
    case choreo_events_v1_Envelope_payment_processed_tag:
        return EVENT_STR_OK(&e->payload.payment_processed, customer_id, "payment_processed.customer_id");
    case choreo_events_v1_Envelope_payment_failed_tag:
        return EVENT_STR_OK(&e->payload.payment_failed, customer_id, "payment_failed.customer_id") &&
               EVENT_STR_OK(&e->payload.payment_failed, reason, "payment_failed.reason");
    case choreo_events_v1_Envelope_inventory_released_tag:
        return EVENT_STR_OK(&e->payload.inventory_released, reason, "inventory_released.reason");
    case choreo_events_v1_Envelope_order_confirmed_tag:
        return EVENT_STR_OK(&e->payload.order_confirmed, customer_id, "order_confirmed.customer_id");
    case choreo_events_v1_Envelope_order_cancel_requested_tag:
        return EVENT_STR_OK(&e->payload.order_cancel_requested, customer_id,
                            "order_cancel_requested.customer_id") &&
               EVENT_STR_OK(&e->payload.order_cancel_requested, reason, "order_cancel_requested.reason");
    case choreo_events_v1_Envelope_payment_refunded_tag:
        return EVENT_STR_OK(&e->payload.payment_refunded, customer_id, "payment_refunded.customer_id");
    case choreo_events_v1_Envelope_order_cancelled_tag:
        return EVENT_STR_OK(&e->payload.order_cancelled, customer_id, "order_cancelled.customer_id") &&
               EVENT_STR_OK(&e->payload.order_cancelled, reason, "order_cancelled.reason");
    case choreo_events_v1_Envelope_notification_sent_tag:
        return EVENT_STR_OK(&e->payload.notification_sent, customer_id, "notification_sent.customer_id") &&
               EVENT_STR_OK(&e->payload.notification_sent, kind, "notification_sent.kind") &&
               EVENT_STR_OK(&e->payload.notification_sent, notification_id,
                            "notification_sent.notification_id");
    default: event__reason(reason, reason_cap, "no payload"); return false;
    }
}

/* What both encode and decode require of an envelope. */
static ch_status event__validate(const choreo_events_v1_Envelope *e, char *reason, size_t reason_cap)
{
    if (e->schema_version == 0) {
        event__reason(reason, reason_cap, "schema version missing (0)");
        return CH_INVALID_ARGUMENT;
    }
    if (e->schema_version > EVENT_SCHEMA_VERSION) {
        event__reason(reason, reason_cap, "schema version %u is newer than %d", (unsigned)e->schema_version,
                      EVENT_SCHEMA_VERSION);
        return CH_INVALID_ARGUMENT;
    }
    if (!EVENT_STR_OK(e, event_id, "event_id") || !EVENT_STR_OK(e, type, "type") ||
        !EVENT_STR_OK(e, order_id, "order_id") || !EVENT_STR_OK(e, causation_id, "causation_id") ||
        !EVENT_STR_OK(e, producer, "producer") || !EVENT_STR_OK(e, traceparent, "traceparent")) {
        return CH_INVALID_ARGUMENT;
    }
    event_type t;
    if (event_type_parse(e->type, &t) != CH_OK) {
        event__reason(reason, reason_cap, "unknown event type \"%.32s\"", e->type);
        return CH_INVALID_ARGUMENT;
    }
    if (e->which_payload != event_types[t].payload_tag) {
        event_type pt;
        const char *payload =
            event_type_from_payload_tag(e->which_payload, &pt) == CH_OK ? event_type_name(pt) : "none";
        event__reason(reason, reason_cap, "type %s does not match payload %s", e->type, payload);
        return CH_INVALID_ARGUMENT;
    }
    if (e->event_id[0] == '\0') {
        event__reason(reason, reason_cap, "event_id missing");
        return CH_INVALID_ARGUMENT;
    }
    if (event_types[t].no_order && e->order_id[0] != '\0') {
        event__reason(reason, reason_cap, "order_id must be empty for %s", e->type);
        return CH_INVALID_ARGUMENT;
    }
    if (!event_types[t].no_order && e->order_id[0] == '\0') {
        event__reason(reason, reason_cap, "order_id missing");
        return CH_INVALID_ARGUMENT;
    }
    if (!event_types[t].no_order && !utf8_valid_token(e->order_id, EVENT_ORDER_ID_MAX)) {
        event__reason(reason, reason_cap, "order_id is not a valid token");
        return CH_INVALID_ARGUMENT;
    }
    if (!event__payload_ok(e, reason, reason_cap)) {
        return CH_INVALID_ARGUMENT;
    }
    if (event_types[t].no_order && !utf8_valid_token(event_key(e), EVENT_KEY_MAX)) {
        event__reason(reason, reason_cap, "%s names no valid SKU or customer (the subject's key)", e->type);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

ch_status event_encode(const choreo_events_v1_Envelope *e, uint8_t *buf, size_t cap, size_t *len,
                       char *reason, size_t reason_cap)
{
    if (!e || !buf || !len) {
        event__reason(reason, reason_cap, "missing argument");
        return CH_INVALID_ARGUMENT;
    }
    ch_status st = event__validate(e, reason, reason_cap);
    if (st != CH_OK) {
        return st;
    }
    if (cap > EVENT_MAX_BYTES) {
        cap = EVENT_MAX_BYTES;
    }
    pb_ostream_t os = pb_ostream_from_buffer(buf, cap);
    if (!pb_encode(&os, choreo_events_v1_Envelope_fields, e)) {
        event__reason(reason, reason_cap, "encode failed: %s", PB_GET_ERROR(&os));
        return strstr(PB_GET_ERROR(&os), "stream full") ? CH_RESOURCE_EXHAUSTED : CH_INVALID_ARGUMENT;
    }
    *len = os.bytes_written;
    return CH_OK;
}

ch_status event_decode(const uint8_t *buf, size_t len, choreo_events_v1_Envelope *out, char *reason,
                       size_t reason_cap)
{
    if (!out) {
        event__reason(reason, reason_cap, "missing argument");
        return CH_INVALID_ARGUMENT;
    }
    if (!buf || len == 0) {
        event__reason(reason, reason_cap, "empty event");
        return CH_INVALID_ARGUMENT;
    }
    if (len > EVENT_MAX_BYTES) {
        event__reason(reason, reason_cap, "oversized: %zu bytes > %d", len, EVENT_MAX_BYTES);
        return CH_INVALID_ARGUMENT;
    }
    memset(out, 0, sizeof *out);
    pb_istream_t is = pb_istream_from_buffer(buf, len);
    if (!pb_decode(&is, choreo_events_v1_Envelope_fields, out)) {
        event__reason(reason, reason_cap, "undecodable: %s", PB_GET_ERROR(&is));
        return CH_INVALID_ARGUMENT;
    }
    return event__validate(out, reason, reason_cap);
}

void event_summary(const choreo_events_v1_Envelope *env, char *buf, size_t cap)
{
    event_type t = EVENT_TYPE_COUNT;
    event_type_of(env, &t);
    switch (t) {
    case EVENT_ORDER_CREATED:
        snprintf(buf, cap, "%u items, total %" PRId64 " cents, customer %s",
                 (unsigned)env->payload.order_created.items_count, env->payload.order_created.total_cents,
                 env->payload.order_created.customer_id);
        break;
    case EVENT_INVENTORY_RESERVED:
        snprintf(buf, cap, "reserved %u units", (unsigned)env->payload.inventory_reserved.units);
        break;
    case EVENT_INVENTORY_FAILED: snprintf(buf, cap, "%s", env->payload.inventory_failed.reason); break;
    case EVENT_PAYMENT_PROCESSED:
        snprintf(buf, cap, "charged %" PRId64 " cents", env->payload.payment_processed.amount_cents);
        break;
    case EVENT_PAYMENT_FAILED: snprintf(buf, cap, "%s", env->payload.payment_failed.reason); break;
    case EVENT_INVENTORY_RELEASED:
        snprintf(buf, cap, "%s %u units",
                 env->payload.inventory_released.restocked ? "restocked" : "released",
                 (unsigned)env->payload.inventory_released.units);
        break;
    case EVENT_PAYMENT_REFUNDED:
        snprintf(buf, cap, "refunded %" PRId64 " cents", env->payload.payment_refunded.amount_cents);
        break;
    case EVENT_ORDER_CANCEL_REQUESTED:
    case EVENT_ORDER_CANCELLED:
        snprintf(buf, cap, "%s",
                 t == EVENT_ORDER_CANCELLED ? env->payload.order_cancelled.reason
                                            : env->payload.order_cancel_requested.reason);
        break;
    case EVENT_NOTIFICATION_SENT:
        snprintf(buf, cap, "notified %s", env->payload.notification_sent.customer_id);
        break;
    case EVENT_INVENTORY_COMMITTED:
        snprintf(buf, cap, "sold %u units", (unsigned)env->payload.inventory_committed.units);
        break;
    case EVENT_INVENTORY_STOCK_SET:
        snprintf(buf, cap, "%s set to %" PRId64 " available", env->payload.inventory_stock_set.sku,
                 env->payload.inventory_stock_set.available);
        break;
    case EVENT_INVENTORY_STOCK_ADJUSTED:
        snprintf(buf, cap, "%s adjusted by %" PRId64, env->payload.inventory_stock_adjusted.sku,
                 env->payload.inventory_stock_adjusted.delta);
        break;
    case EVENT_PAYMENT_CREDITED:
        snprintf(buf, cap, "credited %" PRId64 " cents to %s", env->payload.payment_credited.amount_cents,
                 env->payload.payment_credited.customer_id);
        break;
    default: buf[0] = '\0';
    }
}
