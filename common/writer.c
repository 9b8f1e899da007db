/* writer.c: a service's one writer (writer.h): its queue, its role, its
 * pipeline of compare-and-set publishes, its catch-ups. */
#include "writer.h"

#include <inttypes.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event_bus.h"
#include "log.h"

#define WRITER_CATCH_UP_DIRECT  8  /* events read one by one before a catch-up replays */
#define WRITER_CATCH_UP_TRIES   20 /* reads of a stored event that reads as missing, ... */
#define WRITER_CATCH_UP_WAIT_MS 50 /* ... this far apart, before a catch-up fails */
#define WRITER_FOLLOW_START_S   60 /* longest wait for followed streams at start-up */

static const int writer_backoff_ms[] = {50, 200, 500, 1000, 2000};

/* The fields of an input's "event handled" line, kept until it is finished. */
typedef struct w_log {
    char type[40];
    char order_id[EVENT_ORDER_ID_MAX + 1];
    char event_id[EVENT_ID_LEN + 1];
    char causation_id[88];
    char trace_id[33];
} w_log;

typedef struct w_input {
    writer_input pub;
    bus_in_msg *msg;  /* EVENT, FACT: owned */
    uint64_t need;    /* emitted nothing: answered once the event of this serial is stored */
    int pending;      /* its events in flight */
    int conflicts;    /* times its own event lost a compare-and-set */
    bool barrier;     /* writer_start's: decided once everything queued before it is */
    uint64_t order;   /* when it was taken from the queue: inputs are decided in this order */
    bool emitted;     /* it emitted at least one event in its current decision */
    ch_status status; /* decide()'s error, when it failed */
    w_log log;
    struct w_input *next;
} w_input;

/* A list of inputs, first to last. */
typedef struct w_list {
    w_input *first, *last;
    size_t n;
} w_list;

enum { SLOT_SENT = 0, SLOT_STORED, SLOT_FAILED };

/* One emitted event, in flight or stored but not yet past the head. */
typedef struct w_slot {
    w_input *in;
    uint64_t serial; /* emits numbered from 1 */
    uint64_t expect; /* the last sequence it expected */
    int state;       /* SLOT_*, written by the pipe's callback under qmu */
    ch_status st;
    uint64_t seq;
    uint64_t conflict_last; /* a lost compare-and-set: the stream's last sequence then (0: not known) */
    char msg_id[EVENT_MSG_ID_MAX]; /* the next slot expects it as the stream's last */
    size_t undo_len;
    _Alignas(max_align_t) uint8_t undo[WRITER_UNDO_MAX]; /* aligned for any undo record */
} w_slot;

/* What a subscription's batches are: its writer, its index, its kind. */
typedef struct w_source {
    struct writer *w;
    int index;
    writer_input_kind kind;
    /* a follower: it has handed over the last message its stream held
     * (one with nothing pending after it, or the stream was empty) (under qmu) */
    bool caught_up;
    bool wanted[EVENT_TYPE_COUNT]; /* a follower: the types it hands in */
} w_source;

struct writer {
    bus *b;
    writer_ops ops;
    void *ctx;
    char service[32];
    char stream[64];
    int max_deliver;
    int batch;
    char durables[WRITER_MAX_CONSUMERS][80];
    event_type types[WRITER_MAX_CONSUMERS];
    int n_consumers;
    bus_sub *subs[WRITER_MAX_CONSUMERS + WRITER_MAX_FOLLOWS];
    w_source sources[WRITER_MAX_CONSUMERS + WRITER_MAX_FOLLOWS];
    int n_subs;
    bus_pipe *pipe;

    /* The writer's role: held by the one thread deciding, never waited for
     * (trylock) except by writer_destroy. Everything below "the role's
     * own" is touched only by its holder. */
    pthread_mutex_t role;
    pthread_mutex_t
        qmu; /* guards queue, stopping, the sources' caught_up, barrier_done and every slot's state/st/seq */
    pthread_cond_t qcv;       /* writer_destroy waits on it for outcomes */
    pthread_cond_t follow_cv; /* writer_start waits on it for the followers */
    bool barrier_done;        /* writer_start's barrier was decided (under qmu) */
    w_list queue;             /* arrived, not taken yet */
    bool stopping;
    bool resolved; /* a slot's outcome came in since the holder last looked */

    /* the role's own */
    uint64_t last;                 /* sequence of the last event stored and folded in */
    uint64_t serial;               /* events emitted so far */
    uint64_t batch_first;          /* serial of the first event the current batch emits (or would) */
    uint64_t stored;               /* serial of the last event stored (in order) */
    uint64_t taken;                /* inputs taken from the queue so far */
    w_slot *slots;                 /* ring of WRITER_MAX_IN_FLIGHT */
    size_t head, n_slots;          /* in flight: head .. head+n_slots-1 */
    w_list redo;                   /* to decide (again) before anything new, in order */
    w_list waiting;                /* decided, emitted nothing: waiting to be known current */
    w_list emitting;               /* decided, emitted: waiting for their events to be stored */
    w_list not_found;              /* to decide again after a catch-up */
    bool broken;                   /* a slot failed: no more publishes until the pipeline is recovered */
    int conflict_streak;           /* recoveries from lost compare-and-sets since an event was last stored */
    unsigned seed;                 /* for the jitter of the wait after a lost race */
    w_input *current;              /* the input decide() is deciding */
    choreo_events_v1_Envelope env; /* decoded input */
    choreo_events_v1_Envelope fold_env;
    log_buffer logs;

    pthread_mutex_t stats_mu;
    writer_stats stats;
};

/* ---- lists ---- */

static void list_push(w_list *l, w_input *in)
{
    in->next = NULL;
    if (l->last)
        l->last->next = in;
    else
        l->first = in;
    l->last = in;
    l->n++;
}

static w_input *list_pop(w_list *l)
{
    w_input *in = l->first;
    if (in) {
        l->first = in->next;
        if (!l->first)
            l->last = NULL;
        l->n--;
        in->next = NULL;
    }
    return in;
}

/* Moves every input of from to the end of to, in order. */
static void list_append(w_list *to, w_list *from)
{
    w_input *in;
    while ((in = list_pop(from)))
        list_push(to, in);
}

/* Takes in out of l (linear: the lists are short). */
static void list_remove(w_list *l, w_input *in)
{
    w_input **pp = &l->first, *prev = NULL;
    while (*pp && *pp != in) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = in->next;
    if (l->last == in)
        l->last = prev;
    l->n--;
    in->next = NULL;
}

static int by_order(const void *a, const void *b)
{
    const w_input *x = *(w_input *const *)a, *y = *(w_input *const *)b;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* Puts l in the order its inputs were taken (a merge of a few lists: a
 * sort of pointers; on no memory it stays as it is). */
static void list_sort(w_list *l)
{
    w_input **v = l->n > 1 ? malloc(l->n * sizeof *v) : NULL;
    size_t n = 0;

    if (!v)
        return;
    for (w_input *in = l->first; in; in = in->next)
        v[n++] = in;
    qsort(v, n, sizeof *v, by_order);
    *l = (w_list){0};
    for (size_t i = 0; i < n; i++)
        list_push(l, v[i]);
    free(v);
}

static void stat_add(writer *w, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&w->stats_mu);
    *field += n;
    pthread_mutex_unlock(&w->stats_mu);
}

/* ---- the queue: other threads hand inputs in ---- */

static void writer_run(writer *w);

static w_input *input_new(writer_input_kind kind)
{
    w_input *in = calloc(1, sizeof *in);
    if (in) {
        in->pub.kind = kind;
        in->pub.source = -1;
    }
    return in;
}

static void input_free(w_input *in)
{
    if (in) {
        bus_in_free(in->msg);
        free(in);
    }
}

/* True when a follower's message is of a type its service wants, read
 * from the subject (events.<aggregate>.<event>.<key>) without decoding. */
static bool follow_wants(const w_source *src, const char *subject)
{
    static const char prefix[] = "events.";
    char name[40];
    event_type t;

    if (strncmp(subject, prefix, sizeof prefix - 1) != 0)
        return true; /* not ours to judge: decide() will */
    const char *type = subject + sizeof prefix - 1;
    const char *dot = strchr(type, '.');
    const char *end = dot ? strchr(dot + 1, '.') : NULL;
    size_t len = end ? (size_t)(end - type) : strlen(type);
    if (len >= sizeof name)
        return true;
    memcpy(name, type, len);
    name[len] = '\0';
    return event_type_parse(name, &t) != CH_OK || src->wanted[t];
}

/* A subscription's batch (its thread): every message becomes an input,
 * decided on this thread unless another holds the role. */
static void on_batch(bus_in_msg *const *msgs, size_t n, void *ctx)
{
    w_source *src = ctx;
    writer *w = src->w;
    pthread_mutex_lock(&w->qmu);
    for (size_t i = 0; i < n; i++) {
        if (src->kind == WRITER_FACT && msgs[i]->pending == 0 && !src->caught_up) {
            src->caught_up = true; /* writer_start may wait for it */
            pthread_cond_broadcast(&w->follow_cv);
        }
        if (src->kind == WRITER_FACT && !follow_wants(src, msgs[i]->subject)) {
            bus_in_free(msgs[i]);
            continue;
        }
        w_input *in = input_new(src->kind);
        if (!in) {
            /* a consumer's message comes back after its AckWait; a fact is
             * read again by the next catch-up or restart */
            bus_in_free(msgs[i]);
            continue;
        }
        in->msg = msgs[i];
        in->pub.msg = msgs[i];
        in->pub.source = src->index;
        list_push(&w->queue, in);
    }
    pthread_mutex_unlock(&w->qmu);
    writer_run(w);
}

ch_status writer_submit(writer *w, void *call)
{
    w_input *in = input_new(WRITER_CALL);
    if (!in)
        return CH_NO_MEMORY;
    in->pub.call = call;
    pthread_mutex_lock(&w->qmu);
    bool stopping = w->stopping;
    if (!stopping)
        list_push(&w->queue, in);
    pthread_mutex_unlock(&w->qmu);
    if (stopping) {
        free(in);
        return CH_UNAVAILABLE;
    }
    writer_run(w);
    return CH_OK;
}

/* The pipe's callback (a cnats thread, or the role's holder when a publish
 * fails at once): records the slot's outcome and goes on from there. */
static void on_stored(void *token, ch_status st, const bus_pub_ack *ack, void *ctx)
{
    writer *w = ctx;
    w_slot *s = token;
    pthread_mutex_lock(&w->qmu);
    if (st == CH_OK && ack->duplicate)
        st = CH_CONFLICT; /* stored before, unknown to this state: catch up */
    s->st = st;
    s->seq = ack->seq;
    s->conflict_last = ack->conflict_last_seq;
    s->state = st == CH_OK ? SLOT_STORED : SLOT_FAILED;
    w->resolved = true;
    pthread_cond_signal(&w->qcv);
    pthread_mutex_unlock(&w->qmu);
    writer_run(w);
}

/* ---- finishing inputs ---- */

static void log_fields(w_log *x, const choreo_events_v1_Envelope *e)
{
    snprintf(x->type, sizeof x->type, "%s", e->type);
    snprintf(x->order_id, sizeof x->order_id, "%s", e->order_id);
    snprintf(x->event_id, sizeof x->event_id, "%s", e->event_id);
    snprintf(x->causation_id, sizeof x->causation_id, "%s", e->causation_id);
    event_trace_id(e->traceparent, x->trace_id);
}

static const char *verdict_name(bus_verdict v)
{
    return v == BUS_ACK ? "ack" : v == BUS_RETRY ? "retry" : "dead";
}

/* NATS unavailable or not answering in time (a stream leader being elected,
 * a node or the link down): not the input's fault. */
static bool nats_away(ch_status st)
{
    return st == CH_UNAVAILABLE || st == CH_TIMEOUT;
}

/* An input whose decision was not stored for a passing reason: NATS away,
 * lost races, no room in flight. */
static bool passing(ch_status st)
{
    return nats_away(st) || st == CH_CONFLICT || st == CH_RESOURCE_EXHAUSTED;
}

/* Acks, naks or dead-letters an EVENT, with its log line. */
static void settle_event(writer *w, w_input *in, ch_status st)
{
    bus_in_msg *m = in->msg;
    bus_verdict v = in->pub.verdict;
    char *reason = in->pub.reason;

    if (st == CH_INVALID_ARGUMENT) {
        v = BUS_DEAD;
    } else if (st != CH_OK) {
        v = BUS_RETRY;
        if (!reason[0])
            snprintf(reason, BUS_REASON_MAX, "%s", ch_status_str(st));
    }
    /* NATS away is retried, however long that lasts, and never
     * dead-lettered; only a decision that keeps failing is. */
    if (v == BUS_RETRY && !nats_away(st) && m->deliveries >= (uint64_t)w->max_deliver) {
        size_t used = strlen(reason);
        snprintf(reason + used, BUS_REASON_MAX - used, " (gave up after %" PRIu64 " deliveries)",
                 m->deliveries);
        v = BUS_DEAD;
    }
    char deliveries[24];
    snprintf(deliveries, sizeof deliveries, "%" PRIu64, m->deliveries);
    bool unread = in->log.type[0] == '?'; /* undecodable: its subject and consumer say where it came from */
    log_at(v == BUS_ACK ? LOG_INFO : LOG_WARN, "event handled", "type", in->log.type, "order_id",
           in->log.order_id, "event_id", in->log.event_id, "causation_id", in->log.causation_id, "trace_id",
           in->log.trace_id, "deliveries", deliveries, "outcome", verdict_name(v), "reason",
           reason[0] ? reason : NULL, "subject", unread ? m->subject : NULL, "consumer",
           unread && in->pub.source >= 0 ? w->durables[in->pub.source] : NULL, NULL);
    if (v == BUS_ACK) {
        bus_in_ack(m);
    } else if (v == BUS_RETRY) {
        size_t n = sizeof writer_backoff_ms / sizeof writer_backoff_ms[0];
        size_t i = m->deliveries > 0 ? (size_t)m->deliveries - 1 : 0;
        bus_in_nak(m, writer_backoff_ms[i < n ? i : n - 1]);
    } else if (bus_dead_letter(w->b, m, event_stream_of_subject(m->subject), reason[0] ? reason : "dead") !=
               CH_OK) {
        bus_in_nak(m, 1000); /* nothing is lost: it comes back */
    }
}

/* A FACT has no ack to withhold: one whose decision was not stored for a
 * passing reason is handed over again by its follower, from its sequence,
 * and decided again then, rather than lost with the reaction it made due
 * (what a nak is to an EVENT). */
static void settle_fact(writer *w, w_input *in, ch_status st)
{
    if (passing(st) && in->pub.source >= 0)
        bus_sub_rewind(w->subs[w->n_consumers + in->pub.source], in->msg->stream_seq);
}

/* The input is done: the service learns it, the message is settled. */
static void finish(writer *w, w_input *in, ch_status st)
{
    if (in->barrier) {
        pthread_mutex_lock(&w->qmu);
        w->barrier_done = true; /* writer_start waits for it */
        pthread_cond_broadcast(&w->follow_cv);
        pthread_mutex_unlock(&w->qmu);
        free(in);
        return;
    }
    in->pub.env = NULL;
    if (in->pub.kind != WRITER_FACT && w->ops.finish)
        w->ops.finish(w->ctx, &in->pub, st);
    if (in->pub.kind == WRITER_EVENT)
        settle_event(w, in, st);
    else if (in->pub.kind == WRITER_FACT)
        settle_fact(w, in, st);
    stat_add(w, &w->stats.decided, 1);
    input_free(in);
}

/* ---- the stream: folding, catching up ---- */

/* Folds one stored event of the stream (replay, catch-up). */
static ch_status fold_one(const bus_in_msg *m, void *arg)
{
    writer *w = arg;
    char reason[160] = "";
    ch_status st = event_decode(m->data, m->len, &w->fold_env, reason, sizeof reason);
    if (st == CH_OK)
        st = w->ops.fold(w->ctx, &w->fold_env, m->stream_seq);
    if (m->stream_seq > w->last)
        w->last = m->stream_seq;
    if (st == CH_NO_MEMORY)
        return st;
    if (st != CH_OK) {
        char seq[24];
        snprintf(seq, sizeof seq, "%" PRIu64, m->stream_seq);
        log_warn("event of the own stream not folded in", "stream", w->stream, "seq", seq, "subject",
                 m->subject, "reason", reason[0] ? reason : ch_status_str(st), NULL);
    }
    return CH_OK;
}

/* Folds in what the stream holds after w->last (nothing in flight: the state
 * is exactly the stream up to w->last). Usually a few events of another
 * replica: read one by one; a long gap is replayed.
 *
 * A sequence the stream has (up to its last) but that reads as missing is
 * skipped only when it is gone for good: before the stream's first
 * sequence (purged, aged out). Otherwise it is not readable yet where it
 * was asked (measured: right after a stream leader's node died, a replay
 * stopped short and a read missed a stored event); it is read again,
 * WRITER_CATCH_UP_TRIES times, then the catch-up fails (CH_UNAVAILABLE: the
 * inputs waiting on it are retried) rather than fold a state without it. */
static ch_status catch_up(writer *w, uint64_t known_end)
{
    uint64_t before = w->last, end = known_end;
    /* NATS away: no waiting for a request to time out, callers learn it now;
     * a lost compare-and-set said where the stream was: no need to ask */
    ch_status st = !bus_connected(w->b) ? CH_UNAVAILABLE
                   : known_end          ? CH_OK
                                        : bus_stream_info(w->b, w->stream, NULL, &end);
    uint64_t first = 0; /* the stream's first sequence, asked at the first miss */
    int misses = 0;

    stat_add(w, &w->stats.catch_ups, 1);
    while (st == CH_OK && w->last < end) {
        uint64_t at = w->last;
        if (end > w->last + WRITER_CATCH_UP_DIRECT)
            st = bus_replay(w->b, w->stream, NULL, w->last + 1, fold_one, w, NULL);
        else
            st = bus_get_seq(w->b, w->stream, w->last + 1, fold_one, w);
        if (st == CH_NOT_FOUND)
            st = CH_OK; /* nothing read: as below */
        if (st != CH_OK || w->last > at) {
            misses = 0;
            continue;
        }
        if (first == 0)
            st = bus_stream_first_seq(w->b, w->stream, &first);
        if (st == CH_OK && first > w->last + 1) {
            w->last = first - 1; /* gone for good: nothing to fold */
        } else if (st == CH_OK && ++misses > WRITER_CATCH_UP_TRIES) {
            char seq[24];
            snprintf(seq, sizeof seq, "%" PRIu64, w->last + 1);
            log_warn("event of the own stream not readable yet; catching up later", "stream", w->stream,
                     "seq", seq, NULL);
            st = CH_UNAVAILABLE;
        } else if (st == CH_OK) {
            struct timespec ts = {0, WRITER_CATCH_UP_WAIT_MS * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    if (w->last > before)
        stat_add(w, &w->stats.folded, w->last - before);
    return st;
}

/* ---- deciding ---- */

ch_status writer_emit(writer *w, const choreo_events_v1_Envelope *env, const void *undo, size_t len)
{
    w_input *in = w->current;
    event_out o;

    if (!in || len > WRITER_UNDO_MAX)
        return CH_INVALID_ARGUMENT;
    if (w->n_slots >= WRITER_MAX_IN_FLIGHT)
        return CH_RESOURCE_EXHAUSTED; /* decide() made more than the room it had: retried */
    if (event_prepare(&o, env) != CH_OK)
        return CH_INVALID_ARGUMENT; /* logged */
    w_slot *prev = w->n_slots ? &w->slots[(w->head + w->n_slots - 1) % WRITER_MAX_IN_FLIGHT] : NULL;
    w_slot *s = &w->slots[(w->head + w->n_slots) % WRITER_MAX_IN_FLIGHT];
    s->in = in;
    s->serial = ++w->serial;
    s->expect = w->last + w->n_slots; /* pipelined: each expects the one before it stored */
    s->state = SLOT_SENT;
    s->st = CH_OK;
    s->seq = 0;
    s->conflict_last = 0;
    snprintf(s->msg_id, sizeof s->msg_id, "%s", o.msg_id);
    s->undo_len = len;
    if (len)
        memcpy(s->undo, undo, len);
    w->n_slots++;
    in->pending++;
    in->emitted = true;
    o.m.expect_seq = true;
    o.m.expect_last_seq = s->expect;
    o.m.expect_last_msg_id = prev ? prev->msg_id : NULL; /* stored only behind the one before it */
    event_log_published(env, CH_OK, NULL, "sent");
    /* A publish that fails at once reports through on_stored like any other:
     * the pipeline is recovered when the thread sees it. */
    bus_pipe_publish(w->pipe, &o.m, s);
    return CH_OK;
}

/* Decides one input (taken, or to decide again). */
static void decide_one(writer *w, w_input *in)
{
    char reason[BUS_REASON_MAX] = "";

    if (in->barrier) {
        finish(w, in, CH_OK);
        return;
    }
    in->pub.verdict = BUS_ACK;
    in->pub.reason[0] = '\0';
    in->pub.env = NULL;
    in->emitted = false;
    in->status = CH_OK;
    if (in->pub.kind != WRITER_CALL) {
        if (event_decode(in->msg->data, in->msg->len, &w->env, reason, sizeof reason) != CH_OK) {
            if (in->pub.kind == WRITER_FACT) {
                log_warn("fact not folded in: undecodable", "subject", in->msg->subject, "reason", reason,
                         NULL);
                finish(w, in, CH_INVALID_ARGUMENT);
                return;
            }
            snprintf(in->log.type, sizeof in->log.type, "?");
            snprintf(in->pub.reason, sizeof in->pub.reason, "%s", reason);
            finish(w, in, CH_INVALID_ARGUMENT); /* dead-lettered */
            return;
        }
        event_type t;
        log_fields(&in->log, &w->env);
        if (in->pub.kind == WRITER_EVENT &&
            (event_type_of(&w->env, &t) != CH_OK || t != w->types[in->pub.source])) {
            snprintf(in->pub.reason, sizeof in->pub.reason, "event type %s does not match consumer %s",
                     w->env.type, w->durables[in->pub.source]);
            finish(w, in, CH_INVALID_ARGUMENT);
            return;
        }
        in->pub.env = &w->env;
    }
    w->current = in;
    ch_status st = w->ops.decide(w->ctx, w, &in->pub);
    w->current = NULL;
    in->pub.attempt++;
    if (in->emitted) {
        if (st != CH_OK)
            log_error("decide failed after an emit; its events stand", "status", ch_status_str(st), NULL);
        list_push(&w->emitting, in); /* finished once its events are stored */
        return;
    }
    if (st == CH_NOT_FOUND && !in->pub.caught_up) {
        in->pub.caught_up = true;
        list_push(&w->not_found, in);
        return;
    }
    if (st != CH_OK) {
        finish(w, in, st);
        return;
    }
    if (in->pub.kind == WRITER_FACT) {
        finish(w, in, CH_OK); /* a fact answers nobody: no need to prove it current */
        return;
    }
    /* Answered once every event emitted before this decision is stored and
     * one emitted after the input arrived is: or a read finds nothing new. */
    in->need = w->serial >= w->batch_first ? w->serial : w->batch_first;
    list_push(&w->waiting, in);
}

/* Decides what is to be decided again, then what was taken, while there is
 * room in flight. */
static void decide_all(writer *w, w_list *taken)
{
    w_input *in;
    list_append(&w->redo, taken);
    while (!w->broken && w->n_slots + 8 <= WRITER_MAX_IN_FLIGHT && (in = list_pop(&w->redo)))
        decide_one(w, in);
}

/* ---- the pipeline ---- */

/* Takes the stored slots off the head, in order: the stream moves on, their
 * inputs finish when their last event is stored. Stops at the first slot not
 * stored yet; a failed one breaks the pipeline. */
static void advance(writer *w)
{
    while (w->n_slots > 0 && !w->broken) {
        w_slot *s = &w->slots[w->head];
        pthread_mutex_lock(&w->qmu);
        int state = s->state;
        pthread_mutex_unlock(&w->qmu);
        if (state == SLOT_SENT)
            return;
        if (state == SLOT_FAILED || s->seq != s->expect + 1) {
            w->broken = true;
            return;
        }
        w->last = s->seq;
        w->stored = s->serial;
        w->conflict_streak = 0;
        w->head = (w->head + 1) % WRITER_MAX_IN_FLIGHT;
        w->n_slots--;
        stat_add(w, &w->stats.emitted, 1);
        w_input *in = s->in;
        if (--in->pending == 0) {
            list_remove(&w->emitting, in);
            finish(w, in, CH_OK);
        }
    }
}

/* Every slot has its outcome: undoes, newest first, every event the
 * pipeline still holds (stored or not: past a failure the state must be
 * read back), catches up from the last event stored in order, and then,
 * input by input in their order:
 *   - every event it emitted was stored: it is done (the catch-up folded
 *     them back in);
 *   - an event of it was rejected (CH_CONFLICT: another writer was first,
 *     or a duplicate): nothing of it is stored, it is decided again;
 *   - an event of it has no known outcome (a timeout, NATS gone): an event
 *     or a fact is decided again (deciding is idempotent for them: the
 *     catch-up shows what was stored), a call is answered with that status
 *     (it may have happened: a call without an idempotency key would not
 *     be safe to decide again);
 *   - it emitted nothing: decided again (its answer read the undone state). */
static void recover(writer *w)
{
    w_slot *first = &w->slots[w->head];
    ch_status why = first->st;
    char expect[24], count[24];

    snprintf(expect, sizeof expect, "%" PRIu64, first->expect);
    snprintf(count, sizeof count, "%zu", w->n_slots);
    if (why == CH_CONFLICT) {
        stat_add(w, &w->stats.conflicts, 1);
        log_info("compare-and-set lost: another writer stored first; deciding again", "stream", w->stream,
                 "expected_last_seq", expect, "events_undone", count, NULL);
    } else {
        log_warn("events not confirmed; catching up and deciding again", "stream", w->stream,
                 "expected_last_seq", expect, "events_undone", count, "status", ch_status_str(why), NULL);
    }
    for (size_t i = 0; i < w->n_slots; i++) {
        w_slot *s = &w->slots[(w->head + i) % WRITER_MAX_IN_FLIGHT];
        s->in->status = CH_OK; /* what became of its events, from here on */
    }
    for (size_t i = 0; i < w->n_slots; i++) {
        w_slot *s = &w->slots[(w->head + i) % WRITER_MAX_IN_FLIGHT];
        w_input *in = s->in;
        if (s->state == SLOT_STORED)
            continue;
        if (s->st != CH_CONFLICT)
            in->status = s->st; /* not known */
        else if (in->status == CH_OK)
            in->status = CH_CONFLICT;
    }
    while (w->n_slots > 0) {
        w_slot *s = &w->slots[(w->head + w->n_slots - 1) % WRITER_MAX_IN_FLIGHT];
        w->ops.undo(w->ctx, s->undo, s->undo_len);
        s->in->pending = 0;
        w->n_slots--;
    }
    w->head = 0;
    w->broken = false;
    /* Everything decided on the undone state, back in the order it was taken
     * (those not decided yet, in redo, were all taken after them). */
    w_list again = {0};
    list_append(&again, &w->emitting);
    list_append(&again, &w->waiting);
    list_append(&again, &w->not_found);
    list_sort(&again);
    ch_status st = catch_up(w, first->st == CH_CONFLICT ? first->conflict_last : 0);
    w_list decide_again = {0};
    w_input *in;
    while ((in = list_pop(&again))) {
        ch_status was = in->status;
        if (in->emitted && was == CH_CONFLICT)
            in->conflicts++; /* its own event lost a race; others' losses do not count */
        if (st != CH_OK) {
            finish(w, in, st == CH_NOT_FOUND ? CH_UNAVAILABLE : st);
        } else if (in->emitted && was == CH_OK) {
            finish(w, in, CH_OK); /* all of it stored */
        } else if (in->emitted && was != CH_CONFLICT && in->pub.kind == WRITER_CALL) {
            finish(w, in, was);
        } else if (in->conflicts >= WRITER_CONFLICTS_MAX) {
            snprintf(in->pub.reason, sizeof in->pub.reason, "lost %d compare-and-sets in a row",
                     in->conflicts);
            finish(w, in, CH_CONFLICT);
        } else {
            list_push(&w->redo, in);
        }
    }
    /* Losing again and again to a busy replica: wait a little (jittered,
     * growing) so that it drains and this one gets a window. */
    if (why == CH_CONFLICT && ++w->conflict_streak > 1) {
        int cap_ms = 1 << (w->conflict_streak < 7 ? w->conflict_streak : 7);
        struct timespec ts = {0, (long)(rand_r(&w->seed) % (unsigned)cap_ms) * 1000000L};
        nanosleep(&ts, NULL);
    }
    list_append(&decide_again, &w->redo); /* the inputs taken meanwhile come after them */
    w->redo = decide_again;
}

/* Inputs that emitted nothing: answered once the state is known current
 * after they arrived and everything they read is stored. A stored event
 * emitted after they arrived proves it; with nothing in flight, a read of
 * the stream's last sequence does (and when another replica wrote
 * meanwhile, they are decided again on the new state). */
static void settle_waiting(writer *w)
{
    while (w->waiting.first && w->waiting.first->need <= w->stored)
        finish(w, list_pop(&w->waiting), CH_OK);
    if (w->n_slots > 0 || w->broken || (!w->waiting.first && !w->not_found.first))
        return;
    uint64_t before = w->last;
    ch_status st = catch_up(w, 0);
    if (st != CH_OK) {
        w_input *in;
        while ((in = list_pop(&w->waiting)))
            finish(w, in, st == CH_NOT_FOUND ? CH_UNAVAILABLE : st);
        while ((in = list_pop(&w->not_found)))
            finish(w, in, st == CH_NOT_FOUND ? CH_UNAVAILABLE : st);
        return;
    }
    if (w->last == before) {
        while (w->waiting.first)
            finish(w, list_pop(&w->waiting), CH_OK);
        list_append(&w->redo, &w->not_found); /* nothing new: decided once more, then they stand */
        return;
    }
    /* another replica wrote: what they answered may have changed */
    list_append(&w->redo, &w->waiting);
    list_append(&w->redo, &w->not_found);
}

/* ---- the role ---- */

/* Something to do now (qmu held): an outcome came in, or there are inputs
 * and room to decide them (a broken pipeline decides nothing until every
 * outcome is in, which `resolved` announces). */
static bool has_work(writer *w)
{
    bool room = !w->broken && w->n_slots + 8 <= WRITER_MAX_IN_FLIGHT;
    return w->resolved || (room && (w->queue.first || w->redo.first));
}

/* True when every slot in flight has its outcome (qmu held). */
static bool all_resolved(writer *w)
{
    for (size_t i = 0; i < w->n_slots; i++)
        if (w->slots[(w->head + i) % WRITER_MAX_IN_FLIGHT].state == SLOT_SENT)
            return false;
    return true;
}

static bool idle(writer *w)
{
    return !w->n_slots && !w->redo.first && !w->waiting.first && !w->not_found.first && !w->emitting.first;
}

/* One pass (the role held): takes what has queued up, takes in the
 * outcomes, recovers a broken pipeline, decides, answers what it can. */
static void writer_pass(writer *w)
{
    w_list taken = {0};
    pthread_mutex_lock(&w->qmu);
    w->resolved = false;
    if (!w->broken && w->n_slots + 8 <= WRITER_MAX_IN_FLIGHT) {
        taken = w->queue;
        w->queue = (w_list){0};
    }
    for (w_input *in = taken.first; in; in = in->next)
        in->order = ++w->taken; /* their order, for deciding again after a lost race */
    bool recoverable = w->broken && all_resolved(w);
    pthread_mutex_unlock(&w->qmu);

    log_hold(&w->logs);
    advance(w);
    if (w->broken && !recoverable) {
        pthread_mutex_lock(&w->qmu);
        recoverable = all_resolved(w);
        pthread_mutex_unlock(&w->qmu);
    }
    if (w->broken && recoverable)
        recover(w); /* every outcome is in: undo, catch up, decide again */
    w->batch_first = w->serial + 1;
    decide_all(w, &taken);
    advance(w);
    settle_waiting(w);
    log_release(&w->logs);
}

static bool work_waiting(writer *w)
{
    pthread_mutex_lock(&w->qmu);
    bool work = has_work(w);
    pthread_mutex_unlock(&w->qmu);
    return work;
}

/* Called by every thread that brings work (an input, an outcome): it takes
 * the writer's role and does the work itself, unless another thread holds
 * the role; that one sees the work before it lets go (it looks again after
 * unlocking), so nothing waits for a thread to wake up. This is the one
 * writer without a thread of its own: an input is decided on the thread
 * that received it, a PubAck taken in on the thread that read it, instead
 * of two hand-offs to a writer thread (each a futex wake and a context
 * switch, per event, in every service). */
static void writer_run(writer *w)
{
    while (work_waiting(w)) {
        if (pthread_mutex_trylock(&w->role) != 0)
            return; /* the holder will see it */
        do
            writer_pass(w);
        while (work_waiting(w));
        pthread_mutex_unlock(&w->role);
    }
}

/* ---- start and stop ---- */

ch_status writer_start(bus *b, const writer_spec *spec, writer **out)
{
    *out = NULL;
    if (!b || !spec || !spec->ops || !spec->ops->fold || !spec->ops->decide || !spec->ops->undo ||
        !spec->stream || !spec->service || spec->n_consumers < 0 ||
        spec->n_consumers > WRITER_MAX_CONSUMERS || spec->n_follows < 0 ||
        spec->n_follows > WRITER_MAX_FOLLOWS)
        return CH_INVALID_ARGUMENT;
    writer *w = calloc(1, sizeof *w);
    if (!w)
        return CH_NO_MEMORY;
    w->slots = calloc(WRITER_MAX_IN_FLIGHT, sizeof *w->slots);
    if (!w->slots) {
        free(w);
        return CH_NO_MEMORY;
    }
    w->b = b;
    w->seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)w;
    w->ops = *spec->ops;
    w->ctx = spec->ctx;
    snprintf(w->service, sizeof w->service, "%s", spec->service);
    snprintf(w->stream, sizeof w->stream, "%s", spec->stream);
    w->max_deliver = spec->max_deliver > 0 ? spec->max_deliver : 8;
    w->batch = spec->batch > 0 ? spec->batch : 256;
    pthread_mutex_init(&w->role, NULL);
    pthread_mutex_init(&w->qmu, NULL);
    pthread_cond_init(&w->qcv, NULL);
    pthread_cond_init(&w->follow_cv, NULL);
    pthread_mutex_init(&w->stats_mu, NULL);

    /* the state is the fold of the stream: all of it, before anything else */
    ch_status st = catch_up(w, 0);
    if (st == CH_OK)
        st = bus_pipe_create(b, on_stored, w, spec->publish_timeout_ms, &w->pipe);
    for (int i = 0; st == CH_OK && i < spec->n_consumers + spec->n_follows; i++) {
        w_source *src = &w->sources[i];
        bus_sub_spec ss = {.fn = on_batch, .ctx = src, .batch = w->batch};
        char filter[EVENT_SUBJECT_MAX];
        src->w = w;
        if (i < spec->n_consumers) {
            event_type t = spec->consumers[i].type;
            char *p;
            src->index = i;
            src->kind = WRITER_EVENT;
            w->types[i] = t;
            /* durable names cannot hold '.': "inventory-order_created" */
            snprintf(w->durables[i], sizeof w->durables[i], "%s-%s", w->service, event_type_name(t));
            while ((p = strchr(w->durables[i], '.')))
                *p = '_';
            st = event_subject(filter, sizeof filter, t, NULL);
            ss.stream = event_stream_of(t);
            ss.durable = w->durables[i];
            ss.filter_subject = filter;
            w->n_consumers++;
        } else {
            const writer_follow *f = &spec->follows[i - spec->n_consumers];
            src->index = i - spec->n_consumers;
            src->kind = WRITER_FACT;
            for (int k = 0; k < EVENT_TYPE_COUNT; k++)
                src->wanted[k] = f->n_types == 0;
            for (int k = 0; k < f->n_types && k < WRITER_MAX_FOLLOW_TYPES; k++)
                if ((unsigned)f->types[k] < EVENT_TYPE_COUNT)
                    src->wanted[f->types[k]] = true;
            ss.stream = f->stream;
            uint64_t msgs = 0;
            st = bus_stream_info(b, f->stream, &msgs, NULL);
            src->caught_up = msgs == 0; /* else once the last one is handed over */
        }
        if (st == CH_OK)
            st = bus_sub_start(b, &ss, &w->subs[w->n_subs]);
        if (st == CH_OK)
            w->n_subs++;
    }
    if (st != CH_OK) {
        log_error("writer not started", "stream", w->stream, "status", ch_status_str(st), NULL);
        writer_destroy(w);
        return st;
    }
    /* What the followed streams held at start is folded in before anyone
     * reads: each follower hands over its stream's last message, then a
     * barrier queued behind them is decided (bounded: NATS gone must not
     * hang start-up). */
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += WRITER_FOLLOW_START_S;
    bool timed_out = false;
    pthread_mutex_lock(&w->qmu);
    for (int i = w->n_consumers; i < w->n_subs && !timed_out; i++)
        while (!w->sources[i].caught_up && !timed_out)
            timed_out = pthread_cond_timedwait(&w->follow_cv, &w->qmu, &dl) != 0;
    pthread_mutex_unlock(&w->qmu);
    w_input *barrier = w->n_subs > w->n_consumers && !timed_out ? input_new(WRITER_CALL) : NULL;
    if (barrier) {
        barrier->barrier = true;
        pthread_mutex_lock(&w->qmu);
        list_push(&w->queue, barrier);
        pthread_mutex_unlock(&w->qmu);
        writer_run(w);
        pthread_mutex_lock(&w->qmu);
        while (!w->barrier_done && !timed_out)
            timed_out = pthread_cond_timedwait(&w->follow_cv, &w->qmu, &dl) != 0;
        pthread_mutex_unlock(&w->qmu);
    }
    if (timed_out)
        log_warn("followed streams not folded in at start-up; serving anyway", NULL);
    char last[24];
    snprintf(last, sizeof last, "%" PRIu64, w->last);
    log_info("state folded from the own stream", "stream", w->stream, "last_seq", last, NULL);
    *out = w;
    return CH_OK;
}

uint64_t writer_last_seq(const writer *w)
{
    return w->last;
}

void writer_get_stats(writer *w, writer_stats *out)
{
    pthread_mutex_lock(&w->stats_mu);
    *out = w->stats;
    pthread_mutex_unlock(&w->stats_mu);
}

void writer_destroy(writer *w)
{
    if (!w)
        return;
    for (int i = 0; i < w->n_subs; i++)
        bus_sub_request_stop(w->subs[i]);
    /* Takes the role for good (after its holder, if any, is done) and
     * finishes what is queued or in flight: acks go through the
     * subscriptions, still open. Whoever brings work from now on leaves it
     * queued. */
    pthread_mutex_lock(&w->role);
    pthread_mutex_lock(&w->qmu);
    w->stopping = true;
    while (w->pipe && !(idle(w) && !w->queue.first)) {
        while (!has_work(w))
            pthread_cond_wait(&w->qcv, &w->qmu); /* an outcome: on_stored */
        pthread_mutex_unlock(&w->qmu);
        writer_pass(w);
        pthread_mutex_lock(&w->qmu);
    }
    pthread_mutex_unlock(&w->qmu);
    for (int i = 0; i < w->n_subs; i++)
        bus_sub_stop(w->subs[i]);
    /* what arrived after that: never decided (calls are told so:
     * CH_CANCELLED), not settled (events come back) */
    w_input *in;
    while ((in = list_pop(&w->queue))) {
        if (in->pub.kind == WRITER_CALL && w->ops.finish)
            w->ops.finish(w->ctx, &in->pub, CH_CANCELLED);
        input_free(in);
    }
    bus_pipe_destroy(w->pipe, 0);
    pthread_mutex_unlock(&w->role);
    pthread_mutex_destroy(&w->role);
    pthread_mutex_destroy(&w->qmu);
    pthread_cond_destroy(&w->qcv);
    pthread_cond_destroy(&w->follow_cv);
    pthread_mutex_destroy(&w->stats_mu);
    free(w->slots);
    free(w);
}
