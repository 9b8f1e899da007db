/* ledger.c: service state as a compare-and-set ledger on one subject. */
#include "ledger.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define LEDGER_DEDUP_WINDOW_MS (10 * 60 * 1000)
#define LEDGER_DIRECT_CATCH_UP 8 /* entries read one by one after a lost CAS */
/* The stream's max_msg_size counts headers too (Nats-Msg-Id, Nats-Expected-*):
 * leave room for them above LEDGER_MAX_ENTRY bytes of entry. */
#define LEDGER_HEADER_ROOM 4096

struct ledger {
    bus *b;
    char stream[64];
    char subject[128];
    ledger_apply_fn apply;
    void *ctx;
    uint64_t last; /* sequence of the last entry applied */
    pthread_mutex_t *follow_lock;
    bus_follower *follower;
};

static ch_status apply_one(const bus_in_msg *m, void *arg)
{
    ledger *l = arg;
    ch_status st = l->apply(m->data, m->len, m->stream_seq, l->ctx);

    if (m->stream_seq > l->last)
        l->last = m->stream_seq;
    if (st == CH_NO_MEMORY)
        return st;
    if (st != CH_OK) {
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, m->stream_seq);
        log_warn("ledger entry skipped", "subject", l->subject, "seq", seq, "status", ch_status_str(st),
                 NULL);
    }
    return CH_OK;
}

/* Follower thread: other replicas' entries, applied once under the lock. */
static ch_status follow_one(const bus_in_msg *m, void *arg)
{
    ledger *l = arg;
    ch_status st = CH_OK;
    pthread_mutex_lock(l->follow_lock);
    if (m->stream_seq > l->last)
        st = apply_one(m, l);
    pthread_mutex_unlock(l->follow_lock);
    return st;
}

ch_status ledger_catch_up(ledger *l)
{
    return bus_replay(l->b, l->stream, l->subject, l->last + 1, apply_one, l, NULL);
}

ch_status ledger_open(ledger **out, bus *b, const ledger_spec *spec)
{
    ledger *l = calloc(1, sizeof *l);
    ch_status st;

    if (!l)
        return CH_NO_MEMORY;
    if (snprintf(l->stream, sizeof l->stream, "%s", spec->stream) >= (int)sizeof l->stream ||
        snprintf(l->subject, sizeof l->subject, "%s", spec->subject) >= (int)sizeof l->subject ||
        !spec->apply) {
        free(l);
        return CH_INVALID_ARGUMENT;
    }
    l->b = b;
    l->apply = spec->apply;
    l->ctx = spec->ctx;
    bus_stream_spec ss = {
        .name = l->stream,
        .subjects = {l->subject},
        .storage = BUS_STORAGE_FILE,
        .replicas = spec->replicas,
        .duplicate_window_ms = LEDGER_DEDUP_WINDOW_MS,
        .max_msg_size = LEDGER_MAX_ENTRY + LEDGER_HEADER_ROOM,
    };
    st = bus_ensure_stream(b, &ss);
    if (st == CH_OK)
        st = ledger_catch_up(l);
    if (st != CH_OK) {
        log_error("ledger not opened", "stream", l->stream, "status", ch_status_str(st), NULL);
        free(l);
        return st;
    }
    l->follow_lock = spec->follow_lock;
    if (l->follow_lock) {
        st = bus_follow_start(b, l->stream, l->subject, l->last + 1, follow_one, l, &l->follower);
        if (st != CH_OK) {
            free(l);
            return st;
        }
    }
    char last[24];
    snprintf(last, sizeof last, "%" PRIu64, l->last);
    log_info("ledger replayed", "stream", l->stream, "last_seq", last, NULL);
    *out = l;
    return CH_OK;
}

void ledger_close(ledger *l)
{
    if (!l)
        return;
    bus_follow_stop(l->follower);
    free(l);
}

uint64_t ledger_last_seq(const ledger *l)
{
    return l->last;
}

ch_status ledger_append(ledger *l, const void *data, size_t len, const char *msg_id, int timeout_ms,
                        uint64_t *seq)
{
    bus_out_msg m = {
        .subject = l->subject,
        .data = data,
        .len = len,
        .msg_id = msg_id,
        .expect_last_subject_seq = l->last,
        .expect_no_message = l->last == 0,
    };
    bus_pub_ack ack = {0};
    ch_status st;

    if (len > LEDGER_MAX_ENTRY)
        return CH_RESOURCE_EXHAUSTED;
    st = bus_publish(l->b, &m, timeout_ms, &ack);
    if (st == CH_CONFLICT) {
        /* Someone else appended: learn what they did before deciding again.
         * Usually an entry or two, at the next sequences of this one-subject
         * stream: read them one by one, and replay only for a long gap. */
        ch_status cst = CH_OK;
        int got = 0;
        while (got < LEDGER_DIRECT_CATCH_UP &&
               (cst = bus_get_seq(l->b, l->stream, l->last + 1, apply_one, l)) == CH_OK)
            got++;
        if (cst == CH_NOT_FOUND || (cst == CH_OK && got == 0))
            cst = CH_OK;
        else if (cst == CH_OK)
            cst = ledger_catch_up(l); /* more behind than a few */
        return cst == CH_OK ? CH_CONFLICT : cst;
    }
    if (st != CH_OK)
        return st;
    if (ack.duplicate) {
        /* Stored before (a re-run): make sure it is applied, once. */
        st = ledger_catch_up(l);
    } else if (ack.seq > l->last) {
        bus_in_msg in = {
            .subject = l->subject, .data = data, .len = len, .stream_seq = ack.seq, .deliveries = 1};
        st = apply_one(&in, l);
    }
    if (seq)
        *seq = ack.seq;
    return st;
}
