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

#define LEDGER_FRAME_HDR 4 /* a batch frames each entry with its length, 4 bytes big-endian */

struct ledger {
    bus *b;
    char stream[64];
    char subject[128];
    ledger_apply_fn apply;
    ledger_revert_fn revert;
    void *ctx;
    uint64_t last; /* sequence of the last entry applied */
    pthread_mutex_t *follow_lock;
    bus_follower *follower;
    /* ledger_decide_batch's room, allocated on first use */
    uint8_t *batch;   /* the framed entries of one round */
    uint8_t *entry;   /* one decided entry */
    size_t *item_ids; /* items decided in the round, in order */
    uint8_t *pending; /* per item: 1 not decided yet, 2 waiting for a catch-up */
};

static uint32_t frame_len(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Checks that data is exactly `count` frames; CH_INVALID_ARGUMENT if not. */
static ch_status frames_check(const uint8_t *data, size_t len, const char *count)
{
    char *end = NULL;
    unsigned long want = count ? strtoul(count, &end, 10) : 0;
    size_t off = 0, got = 0;

    if (!count || end == count || *end || want == 0 || want > LEDGER_MAX_BATCH)
        return CH_INVALID_ARGUMENT;
    while (off < len) {
        if (len - off < LEDGER_FRAME_HDR || frame_len(data + off) > len - off - LEDGER_FRAME_HDR)
            return CH_INVALID_ARGUMENT;
        off += LEDGER_FRAME_HDR + frame_len(data + off);
        got++;
    }
    return got == want ? CH_OK : CH_INVALID_ARGUMENT;
}

static void log_skipped(const ledger *l, uint64_t seq, ch_status st)
{
    char seq_s[24];
    snprintf(seq_s, sizeof seq_s, "%" PRIu64, seq);
    log_warn("ledger entry skipped", "subject", l->subject, "seq", seq_s, "status", ch_status_str(st), NULL);
}

/* Folds one stored message in: one entry, or every entry of a batch. */
static ch_status apply_one(const bus_in_msg *m, void *arg)
{
    ledger *l = arg;
    const char *count = bus_in_msg_header(m, LEDGER_HDR_ENTRIES);
    ch_status st;

    if (m->stream_seq > l->last)
        l->last = m->stream_seq;
    if (!count) {
        st = l->apply(m->data, m->len, m->stream_seq, l->ctx);
        if (st != CH_OK && st != CH_NO_MEMORY)
            log_skipped(l, m->stream_seq, st);
        return st == CH_NO_MEMORY ? st : CH_OK;
    }
    if ((st = frames_check(m->data, m->len, count)) != CH_OK) {
        log_skipped(l, m->stream_seq, st); /* corrupt: none of it, rather than half */
        return CH_OK;
    }
    for (size_t off = 0; off < m->len;) {
        uint32_t n = frame_len(m->data + off);
        st = l->apply(m->data + off + LEDGER_FRAME_HDR, n, m->stream_seq, l->ctx);
        if (st == CH_NO_MEMORY)
            return st;
        if (st != CH_OK)
            log_skipped(l, m->stream_seq, st);
        off += LEDGER_FRAME_HDR + n;
    }
    return CH_OK;
}

/* Follower thread: other replicas' entries, applied once (the follower
 * holds follow_lock around each batch). */
static ch_status follow_one(const bus_in_msg *m, void *arg)
{
    ledger *l = arg;
    return m->stream_seq > l->last ? apply_one(m, l) : CH_OK;
}

ch_status ledger_catch_up(ledger *l)
{
    return bus_replay(l->b, l->stream, l->subject, l->last + 1, apply_one, l, NULL);
}

/* Someone else appended: learn what they did before deciding again.
 * Usually an entry or two, at the next sequences of this one-subject
 * stream: read them one by one, and replay only for a long gap. */
static ch_status catch_up_after_conflict(ledger *l)
{
    ch_status st = CH_OK;
    int got = 0;

    while (got < LEDGER_DIRECT_CATCH_UP &&
           (st = bus_get_seq(l->b, l->stream, l->last + 1, apply_one, l)) == CH_OK)
        got++;
    if (st == CH_NOT_FOUND || (st == CH_OK && got == 0))
        return CH_OK;
    return st == CH_OK ? ledger_catch_up(l) : st; /* more behind than a few */
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
    l->revert = spec->revert;
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
        st = bus_follow_start_locked(b, l->stream, l->subject, l->last + 1, follow_one, l, l->follow_lock,
                                     &l->follower);
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
    free(l->batch);
    free(l->entry);
    free(l->item_ids);
    free(l->pending);
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
        .expect_seq = true, /* the stream holds the ledger's subject alone */
        .expect_last_seq = l->last,
    };
    bus_pub_ack ack = {0};
    ch_status st;

    if (len > LEDGER_MAX_ENTRY)
        return CH_RESOURCE_EXHAUSTED;
    st = bus_publish(l->b, &m, timeout_ms, &ack);
    if (st == CH_CONFLICT) {
        ch_status cst = catch_up_after_conflict(l);
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

/* Undoes the round's entries (framed in l->batch[0, len)) newest first. */
static void revert_round(ledger *l, size_t len, size_t nframes)
{
    size_t offs[LEDGER_MAX_BATCH], k = 0;

    for (size_t off = 0; off < len && k < nframes; off += LEDGER_FRAME_HDR + frame_len(l->batch + off))
        offs[k++] = off;
    while (k-- > 0) {
        ch_status st =
            l->revert(l->batch + offs[k] + LEDGER_FRAME_HDR, frame_len(l->batch + offs[k]), l->ctx);
        if (st != CH_OK)
            log_error("ledger entry not undone", "subject", l->subject, "status", ch_status_str(st), NULL);
    }
}

/* Stores the round's framed entries as one message expected to follow the
 * last entry applied. */
static ch_status append_round(ledger *l, size_t len, size_t nframes, int timeout_ms)
{
    char count[24];
    snprintf(count, sizeof count, "%zu", nframes);
    bus_out_msg m = {
        .subject = l->subject,
        .data = l->batch,
        .len = len,
        .headers = {{LEDGER_HDR_ENTRIES, count}},
        .nheaders = 1,
        .expect_seq = true, /* the stream holds the ledger's subject alone */
        .expect_last_seq = l->last,
    };
    bus_pub_ack ack = {0};
    ch_status st = bus_publish(l->b, &m, timeout_ms, &ack);

    if (st == CH_OK && ack.seq > l->last)
        l->last = ack.seq; /* applied already, as it was decided */
    return st;
}

static ch_status batch_room(ledger *l)
{
    if (l->batch)
        return CH_OK;
    l->batch = malloc(LEDGER_MAX_ENTRY);
    l->entry = malloc(LEDGER_MAX_ENTRY);
    l->item_ids = malloc(LEDGER_MAX_BATCH * sizeof *l->item_ids);
    l->pending = malloc(LEDGER_MAX_BATCH);
    if (l->batch && l->entry && l->item_ids && l->pending)
        return CH_OK;
    free(l->batch);
    free(l->entry);
    free(l->item_ids);
    free(l->pending);
    l->batch = l->entry = l->pending = NULL;
    l->item_ids = NULL;
    return CH_NO_MEMORY;
}

enum { ITEM_DONE = 0, ITEM_PENDING = 1, ITEM_AFTER_CATCH_UP = 2 };

ch_status ledger_decide_batch(ledger *l, size_t n, ledger_decide_fn decide, void *ctx, ch_status *item_status,
                              int timeout_ms)
{
    size_t left = n;
    int attempts = 0;
    bool caught_up = false;

    ch_status bst = n > LEDGER_MAX_BATCH || !l->revert ? CH_INVALID_ARGUMENT : batch_room(l);
    if (bst != CH_OK) {
        /* Nothing decided: every item is to be tried again, none is at fault. */
        for (size_t i = 0; i < n && i < LEDGER_MAX_BATCH; i++)
            item_status[i] = bst == CH_NO_MEMORY ? CH_NO_MEMORY : CH_INTERNAL;
        return bst;
    }
    memset(l->pending, ITEM_PENDING, n);
    while (left > 0) {
        size_t len = 0, nframes = 0, waiting = 0;
        /* A round: decide what is pending, in order, into one batch. */
        for (size_t i = 0; i < n; i++) {
            size_t elen = 0;
            if (l->pending[i] != ITEM_PENDING)
                continue;
            ch_status st = decide(i, ctx, l->entry, LEDGER_MAX_ENTRY - LEDGER_FRAME_HDR, &elen);
            if (st == CH_NOT_FOUND && !caught_up) {
                l->pending[i] = ITEM_AFTER_CATCH_UP; /* perhaps another replica's doing */
                waiting++;
                continue;
            }
            if (st == CH_OK && elen > LEDGER_MAX_ENTRY - LEDGER_FRAME_HDR)
                st = CH_RESOURCE_EXHAUSTED;
            if (st == CH_OK && elen > 0 && LEDGER_MAX_ENTRY - len < LEDGER_FRAME_HDR + elen)
                break; /* full: the rest goes in the next round */
            if (st == CH_OK && elen > 0)
                st = l->apply(l->entry, elen, 0, l->ctx);
            if (st != CH_OK || elen == 0) {
                item_status[i] = st;
                l->pending[i] = ITEM_DONE;
                left--;
                continue;
            }
            l->batch[len] = (uint8_t)(elen >> 24);
            l->batch[len + 1] = (uint8_t)(elen >> 16);
            l->batch[len + 2] = (uint8_t)(elen >> 8);
            l->batch[len + 3] = (uint8_t)elen;
            memcpy(l->batch + len + LEDGER_FRAME_HDR, l->entry, elen);
            len += LEDGER_FRAME_HDR + elen;
            l->item_ids[nframes++] = i;
            l->pending[i] = ITEM_DONE; /* until the append says otherwise */
        }
        bool catch_up = waiting > 0 && !caught_up;
        if (nframes > 0) {
            ch_status st = append_round(l, len, nframes, timeout_ms);
            bool again = false;
            if (st == CH_OK) {
                left -= nframes;
            } else {
                revert_round(l, len, nframes);
                if (st == CH_CONFLICT && ++attempts < LEDGER_CAS_ATTEMPTS) {
                    ch_status cst =
                        catch_up_after_conflict(l); /* what the other writer did; then decide again */
                    again = cst == CH_OK;
                    st = again ? st : cst;
                    catch_up = catch_up && !again;
                    caught_up = caught_up || again;
                }
            }
            for (size_t k = 0; k < nframes; k++) {
                size_t i = l->item_ids[k];
                if (again) {
                    l->pending[i] = ITEM_PENDING;
                } else {
                    item_status[i] = st;
                    left -= st != CH_OK; /* the CH_OK ones were counted above */
                }
            }
        }
        ch_status cst = catch_up ? ledger_catch_up(l) : CH_OK;
        caught_up = caught_up || catch_up;
        for (size_t i = 0; i < n && waiting > 0; i++) {
            if (l->pending[i] != ITEM_AFTER_CATCH_UP)
                continue;
            waiting--;
            if (cst == CH_OK) {
                l->pending[i] = ITEM_PENDING;
            } else {
                item_status[i] = cst;
                l->pending[i] = ITEM_DONE;
                left--;
            }
        }
    }
    return CH_OK;
}
