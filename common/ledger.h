/* ledger.h: a service's private state as an append-only ledger on one
 * JetStream subject, written with compare-and-set.
 *
 * Stock levels and account balances are not events of the saga, yet they
 * must survive a restart and must not be decided twice by two replicas. So
 * each service keeps them as a fold over its own ledger: entries (encoded by
 * the service, e.g. with nanopb) on one subject of a file-storage stream.
 * ledger_open replays every entry into the service's apply function;
 * ledger_decide_batch records the decisions of a batch of events in one
 * message (entries framed, LEDGER_HDR_ENTRIES says how many);
 * ledger_append publishes a new entry only if the subject's last sequence is
 * still the one this process has applied (compare-and-set on the stream's
 * last sequence, which every replica of an R3 stream enforces; the stream
 * holds the ledger's one subject, so that is the ledger's last entry). A replica
 * that lost the race gets CH_CONFLICT after its state has been brought up to
 * date, and decides again from the fresh state. A duplicate message id
 * (a re-run handler) stores nothing and applies nothing twice.
 *
 * Ownership: the caller owns the ledger (ledger_close); data passed in is
 * copied. Threads: not thread-safe; the service serialises calls with the
 * same lock that guards the state apply() changes. apply runs on the calling
 * thread, inside ledger_open/append/catch_up, or on the follower thread with
 * follow_lock held. */
#ifndef CHOREO_LEDGER_H
#define CHOREO_LEDGER_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "status.h"

#define LEDGER_MAX_ENTRY    65536 /* bytes of one stored message: one entry, or a batch of them */
#define LEDGER_MAX_BATCH    1024  /* entries in one batch message */
#define LEDGER_CAS_ATTEMPTS 5     /* compare-and-set tries of one batch before its items fail */
#define LEDGER_HDR_ENTRIES  "Choreo-Ledger-Entries" /* on a batch message: how many entries it frames */

typedef struct ledger ledger;

/* Folds one entry into the service's state. An error stops ledger_open
 * (CH_NO_MEMORY) or is logged and skipped (anything else: a corrupt entry
 * must not brick the service). */
typedef ch_status (*ledger_apply_fn)(const uint8_t *data, size_t len, uint64_t seq, void *ctx);

/* Undoes one entry apply folded in, the most recent one not yet undone
 * (ledger_decide_batch undoes a batch newest first when it cannot be
 * stored). Must not fail for an entry apply just took. */
typedef ch_status (*ledger_revert_fn)(const uint8_t *data, size_t len, void *ctx);

typedef struct ledger_spec {
    const char *stream;  /* e.g. "INVENTORY" */
    const char *subject; /* e.g. "inventory.ledger" */
    int replicas;        /* 0: 1 */
    ledger_apply_fn apply;
    ledger_revert_fn revert; /* needed by ledger_decide_batch only */
    void *ctx;
    /* When set, the ledger also follows its subject on a thread of its own
     * and applies other replicas' entries as they are stored, taking this
     * lock (the one that guards the state) around each apply, so reads on
     * an idle replica are not stale. NULL: state moves only on append and
     * catch-up. */
    pthread_mutex_t *follow_lock;
} ledger_spec;

/* Ensures the stream (file storage, the one subject, dedup window 10 min),
 * then replays every entry into apply. */
ch_status ledger_open(ledger **out, bus *b, const ledger_spec *spec);

/* Stops the follower and frees the ledger (not the bus). Accepts NULL. Not
 * with follow_lock held. */
void ledger_close(ledger *l);

/* Appends one entry, expected to follow the last entry applied. On CH_OK
 * the entry is stored and applied (and *seq, if not NULL, is its
 * sequence). On CH_CONFLICT another writer got there first: newer entries
 * have been applied; decide again and retry. A duplicate msg_id returns
 * CH_OK without applying anything twice. Other errors (CH_UNAVAILABLE,
 * CH_TIMEOUT) leave the state as it was. */
ch_status ledger_append(ledger *l, const void *data, size_t len, const char *msg_id, int timeout_ms,
                        uint64_t *seq);

/* Decides item i of a batch against the current state, which already holds
 * the entries decided for the items before it: writes the encoded entry the
 * decision needs into buf (at most cap bytes) and sets *len, or sets *len to
 * 0 when nothing needs recording (decided before, nothing to do). Any other
 * status than CH_OK is item i's outcome (CH_NOT_FOUND: see below). Must be
 * a pure function of the state and the item: it may be called again. */
typedef ch_status (*ledger_decide_fn)(size_t i, void *ctx, uint8_t *buf, size_t cap, size_t *len);

/* Decides n items (at most LEDGER_MAX_BATCH) in order and records all their
 * entries in ONE stored message, so a batch of events costs one round trip:
 * each entry is applied as soon as it is decided (the next item sees it),
 * then the batch is appended with compare-and-set. If another writer got
 * there first, the batch's entries are undone newest first (spec.revert),
 * the other writer's entries applied, and the items decided again, up to
 * LEDGER_CAS_ATTEMPTS times. An item whose decide says CH_NOT_FOUND (e.g. a
 * commit for a reservation another replica made) is decided again once
 * after a catch-up. item_status[i] gets each item's outcome: CH_OK once its
 * decision is stored (or was before), the decide error, or the append error
 * (CH_CONFLICT, CH_UNAVAILABLE, CH_TIMEOUT) with the state left as it was.
 * Returns CH_OK; or, when nothing could be decided, CH_INVALID_ARGUMENT (n
 * over LEDGER_MAX_BATCH, no revert in the spec) or CH_NO_MEMORY, with every
 * item's status CH_INTERNAL or CH_NO_MEMORY (so that a caller retries them).
 * Caller holds the state lock. */
ch_status ledger_decide_batch(ledger *l, size_t n, ledger_decide_fn decide, void *ctx, ch_status *item_status,
                              int timeout_ms);

/* Applies entries stored since the last one applied (other replicas'). */
ch_status ledger_catch_up(ledger *l);

/* Sequence of the last entry applied (0: none). */
uint64_t ledger_last_seq(const ledger *l);

#endif
