/* notifications_core.h: the notifications domain, pure (no gRPC, no NATS, no
 * clock).
 *
 * A notification is what a customer is told when their order ends: one per
 * (order, kind), kind being "order confirmed" or "order cancelled". The core
 * builds a notification from the facts of an order event (notif_build), checks
 * one read back from the event stream (notif_validate), and keeps them all in
 * a store in the order they were recorded, indexed by customer and by order,
 * so a second notification of the same (order, kind) is refused and lists
 * page cheaply.
 *
 * Readers may be shown a prefix of the store only (`upto`, a seq): the
 * service keeps the notifications it recorded but has not confirmed yet at
 * the end, where notif_store_remove_newest takes them back.
 *
 * Ownership: a notif_store owns copies of its notifications; pointers it
 * returns stay valid until the next notif_store_add, notif_store_remove_newest
 * or the destroy (the array may move). Inputs are borrowed. Not thread-safe:
 * the service serialises access. */
#ifndef CHOREO_NOTIFICATIONS_CORE_H
#define CHOREO_NOTIFICATIONS_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define NOTIF_ORDER_ID_MAX  40  /* bytes of an order id */
#define NOTIF_CUSTOMER_MAX  64  /* bytes of a customer id */
#define NOTIF_REASON_MAX    200 /* bytes of a cancel reason taken from an event */
#define NOTIF_MESSAGE_MAX   256 /* bytes of the text sent */
#define NOTIF_ID_MAX        80  /* bytes of "<order_id>.<kind>" */
#define NOTIF_KIND_NAME_MAX 32  /* bytes of a kind name */
#define NOTIF_PAGE_DEFAULT  50
#define NOTIF_PAGE_MAX      500
#define NOTIF_TOKEN_MAX     32 /* bytes of a page token, NUL included */

/* Same numbers as choreo.notifications.v1.NotificationKind. */
typedef enum notif_kind {
    NOTIF_KIND_UNSPECIFIED = 0,
    NOTIF_ORDER_CONFIRMED = 1, /* "order_confirmed": the order was paid */
    NOTIF_ORDER_CANCELLED = 2, /* "order_cancelled": the saga ended without a sale */
} notif_kind;

typedef struct notif_notification {
    char id[NOTIF_ID_MAX + 1]; /* "<order_id>.<kind name>" */
    char order_id[NOTIF_ORDER_ID_MAX + 1];
    char customer_id[NOTIF_CUSTOMER_MAX + 1];
    notif_kind kind;
    char message[NOTIF_MESSAGE_MAX + 1];
    int64_t sent_at_ms; /* when it was recorded, ms since the epoch */
    uint64_t seq;       /* 1-based position in its store; 0 until added */
} notif_notification;

/* The facts an order event gives (borrowed from the decoded event). */
typedef struct notif_input {
    notif_kind kind;
    const char *order_id;
    const char *customer_id;
    int64_t total_cents; /* ORDER_CONFIRMED: what was charged, >= 0 */
    const char *reason;  /* ORDER_CANCELLED: why; "" or NULL when none */
    int64_t sent_at_ms;
} notif_input;

/* "order_confirmed" / "order_cancelled"; "unspecified" otherwise. Never NULL. */
const char *notif_kind_name(notif_kind k);

/* Parses a kind name; CH_INVALID_ARGUMENT (and *out unchanged) if unknown. */
ch_status notif_kind_parse(const char *name, notif_kind *out);

/* Builds the notification for in into *out: id "<order_id>.<kind>", the text
 * ("Your order ord-1 is confirmed: total 30.00", "Your order ord-1 was
 * cancelled: out of stock"; a long reason is cut at a UTF-8 boundary so the
 * text fits NOTIF_MESSAGE_MAX). On bad input writes a message naming the
 * field ("customer_id: required") and returns CH_INVALID_ARGUMENT. */
ch_status notif_build(const notif_input *in, notif_notification *out, char *err, size_t errlen);

/* Checks a notification read back from outside (the event stream): ids are
 * tokens, the id matches order and kind, the text is 1..NOTIF_MESSAGE_MAX
 * bytes of UTF-8. CH_INVALID_ARGUMENT with the field named in err. */
ch_status notif_validate(const notif_notification *n, char *err, size_t errlen);

/* Checks a list request: exactly one of customer_id / order_id (the other ""),
 * each a valid id; page_size 0..NOTIF_PAGE_MAX; the token shape. Writes the
 * page size to use (0 means NOTIF_PAGE_DEFAULT) into *size.
 * CH_INVALID_ARGUMENT with the field(s) named in err. */
ch_status notif_validate_list(const char *customer_id, const char *order_id, uint32_t page_size,
                              const char *page_token, size_t *size, char *err, size_t errlen);

/* ---- the store ---- */

typedef struct notif_store notif_store;

ch_status notif_store_create(notif_store **out);
void notif_store_destroy(notif_store *s); /* accepts NULL */

/* Records a copy of n (its seq is assigned). A notification of the same
 * (order, kind) already there is kept and *added is false (CH_OK): one per
 * order and kind. CH_NO_MEMORY leaves the store unchanged. */
ch_status notif_store_add(notif_store *s, const notif_notification *n, bool *added);

/* Takes the newest notification out again (the undo of the last add that
 * added one): the store is then exactly as before that add, its lists, pages
 * and tokens included. Nothing on an empty store. Cannot fail. */
void notif_store_remove_newest(notif_store *s);

/* The notification of (order_id, kind), or NULL. */
const notif_notification *notif_store_find(const notif_store *s, const char *order_id, notif_kind kind);

/* Notifications recorded so far; also the seq of the newest. */
uint64_t notif_store_count(const notif_store *s);

/* The notification with this seq (1..count), or NULL. */
const notif_notification *notif_store_at(const notif_store *s, uint64_t seq);

/* One page, oldest first, of the notifications of customer_id (order_id "")
 * or of order_id (customer_id ""), among those with seq <= upto
 * (notif_store_count(s) for all). page_token is "" for the first page or a
 * next_token from an earlier page. Fills out[0..*n) (at most cap) with
 * borrowed pointers and next_token (NOTIF_TOKEN_MAX bytes) with "" on the
 * last page. CH_INVALID_ARGUMENT for a token this store did not make. */
ch_status notif_store_list(const notif_store *s, const char *customer_id, const char *order_id,
                           const char *page_token, uint64_t upto, const notif_notification **out, size_t cap,
                           size_t *n, char *next_token);

/* The notifications with after < seq <= upto, oldest first, of customer_id
 * ("" or NULL: of everyone): fills out[0..*n) (at most cap) with borrowed
 * pointers and returns the seq to go on after (the last one looked at: upto
 * when fewer than cap came back). A watcher's cursor. */
uint64_t notif_store_after(const notif_store *s, const char *customer_id, uint64_t after, uint64_t upto,
                           const notif_notification **out, size_t cap, size_t *n);

#endif
