/* rpc_server.c: the gRPC server runtime over the gRPC C core 1.51 API.
 *
 * Threads and queues:
 *   - N workers, each polling one server-registered completion queue. Every
 *     queue keeps RPC_UNARY_BACKLOG requests outstanding per unary method and
 *     one generic request (unknown methods -> UNIMPLEMENTED).
 *   - Streaming requests are kept outstanding (RPC_STREAM_BACKLOG per method)
 *     with their own completion queue bound to the call; on arrival the call
 *     and that queue move to a thread of their own.
 *   - Shutdown runs on the caller's thread with a dedicated queue for the
 *     shutdown tag.
 *
 * Unary call states (one rpc_call each, tags embedded in the struct):
 *   REQUESTED  request_registered_call outstanding (tag t_new)
 *   ACTIVE     arrived; RECV_CLOSE_ON_SERVER started (t_close); the handler
 *              owes one reply
 *   SENDING    reply batch started (t_send)
 *   DONE       close and send both completed: freed, live count drops
 *   ABANDONED  shutdown cancelled it before the handler replied; the grpc
 *              call is released and the struct waits for the late reply,
 *              which only frees it
 * Batches of one call are started under its mutex. */
#include "rpc_server.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "log.h"

#define RPC_MAX_METHODS      64
#define RPC_MAX_WORKERS      64
#define RPC_MAX_MSG_CAP      (64 * 1024 * 1024)
#define RPC_MAX_STREAMS_CAP  4096
#define RPC_MAX_GRACE_MS     600000
#define RPC_UNARY_BACKLOG    16
#define RPC_STREAM_BACKLOG   2
#define RPC_MAX_OUT_MD       16
#define RPC_MAX_OUT_MD_BYTES 4096
#define RPC_DETAILS_MAX      512
#define RPC_MAX_IN_MD_BYTES  (64 * 1024)
#define RPC_POLL_MS          100

typedef enum tag_kind {
    TAG_UNARY_NEW,
    TAG_UNARY_CLOSE,
    TAG_UNARY_SEND,
    TAG_GENERIC_NEW,
    TAG_GENERIC_DONE,
    TAG_STREAM_NEW,
    TAG_STREAM_CLOSE,
    TAG_STREAM_SEND,
    TAG_STREAM_RECV,
    TAG_STREAM_STATUS,
    TAG_SHUTDOWN,
} tag_kind;

typedef struct rpc_tag {
    tag_kind kind;
    void *owner;
} rpc_tag;

typedef struct method_rec {
    char *path;
    rpc_kind kind;
    const ProtobufCMessageDescriptor *request;
    const ProtobufCMessageDescriptor *response;
    rpc_unary_fn unary;
    rpc_stream_fn stream;
    void *ctx;
    void *handle; /* from grpc_server_register_method */
} method_rec;

/* Received metadata copied into one allocation of NUL-terminated strings. */
typedef struct md_entry {
    const char *key;
    const char *value;
    size_t len;
} md_entry;

typedef struct md_copy {
    md_entry *entries; /* one malloc holding the entries and the bytes */
    size_t count;
} md_copy;

typedef struct rpc_worker {
    rpc_server *s;
    grpc_completion_queue *cq;
    pthread_t thread;
    bool running;
} rpc_worker;

struct rpc_call {
    rpc_tag t_new, t_close, t_send;
    rpc_server *s; /* not touched once abandoned */
    method_rec *m;
    rpc_worker *w;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md_in;
    grpc_byte_buffer *payload;
    md_copy md;
    ProtobufCMessage *req;
    int cancelled;
    pthread_mutex_t mu;
    bool replied, close_done, send_done, abandoned;
    size_t nout;
    char *out_key[RPC_MAX_OUT_MD];
    char *out_val[RPC_MAX_OUT_MD];
    size_t out_bytes;
    grpc_metadata send_md[RPC_MAX_OUT_MD];
    grpc_byte_buffer *send_buf;
    grpc_slice details;
    bool has_details;
    /* a reply prepared ahead of sending (rpc_call_prepare_*) */
    bool has_prepared;
    grpc_status_code prepared_code;
    grpc_byte_buffer *prepared_buf;
    char *prepared_details;
    char *path;            /* own copy, so a late reply after destroy can still log */
    size_t max_send;       /* copied from the options for the same reason */
    rpc_call *prev, *next; /* live list, under server mu */
};

typedef struct generic_call {
    rpc_tag t_new, t_done;
    rpc_worker *w;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_slice status_details;
    int cancelled;
} generic_call;

struct rpc_stream {
    rpc_tag t_new, t_close, t_send, t_recv, t_status;
    rpc_server *s;
    method_rec *m;
    rpc_worker *w;
    grpc_completion_queue *cq; /* bound to the call; polled by the stream thread only */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md_in;
    grpc_byte_buffer *payload;
    md_copy md;
    int cancelled;
    bool close_started, close_done, md_sent;
    bool recv_pending, recv_ok, send_ok, status_done;
    grpc_byte_buffer *recv_buf;
    char error[RPC_DETAILS_MAX];
    bool has_error;
    pthread_t thread;
    bool done; /* thread finished, waiting to be joined (under server mu) */
    rpc_stream *next;
};

struct rpc_server {
    rpc_server_options opts;
    char *listen_addr;
    method_rec methods[RPC_MAX_METHODS];
    size_t nmethods;
    char *services[RPC_MAX_METHODS];
    size_t nservices;
    grpc_server *server;
    rpc_worker workers[RPC_MAX_WORKERS];
    grpc_completion_queue *shutdown_cq;
    rpc_tag t_shutdown;
    int port;
    bool started, shut_down;
    atomic_bool stopping;
    pthread_mutex_t shutdown_mu; /* serializes start/shutdown */
    pthread_mutex_t mu;          /* live, calls, streams, stream_list */
    pthread_cond_t cv;
    int live;
    int requests; /* request_call tags not yet come back: a matched call may sit in a queue */
    int streams;
    rpc_call *calls;
    rpc_stream *stream_list;
};

/* ---- small helpers ---- */

static gpr_timespec deadline_in_ms(int64_t ms)
{
    if (ms < 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static gpr_timespec earlier(gpr_timespec a, gpr_timespec b)
{
    return gpr_time_cmp(a, b) < 0 ? a : b;
}

static void md_copy_init(md_copy *out, const grpc_metadata_array *a)
{
    out->entries = NULL;
    out->count = 0;
    size_t bytes = 0, n = 0;
    for (size_t i = 0; i < a->count; i++) {
        size_t add = GRPC_SLICE_LENGTH(a->metadata[i].key) + GRPC_SLICE_LENGTH(a->metadata[i].value) + 2;
        if (bytes + add > RPC_MAX_IN_MD_BYTES)
            break;
        bytes += add;
        n++;
    }
    if (n == 0)
        return;
    md_entry *e = malloc(n * sizeof(*e) + bytes);
    if (!e)
        return;
    char *p = (char *)(e + n);
    for (size_t i = 0; i < n; i++) {
        const grpc_slice *k = &a->metadata[i].key, *v = &a->metadata[i].value;
        size_t kl = GRPC_SLICE_LENGTH(*k), vl = GRPC_SLICE_LENGTH(*v);
        memcpy(p, GRPC_SLICE_START_PTR(*k), kl);
        p[kl] = '\0';
        e[i].key = p;
        p += kl + 1;
        memcpy(p, GRPC_SLICE_START_PTR(*v), vl);
        p[vl] = '\0';
        e[i].value = p;
        e[i].len = vl;
        p += vl + 1;
    }
    out->entries = e;
    out->count = n;
}

static const char *md_copy_find(const md_copy *md, const char *key, size_t *len)
{
    for (size_t i = 0; key && i < md->count; i++) {
        if (strcmp(md->entries[i].key, key) == 0) {
            if (len)
                *len = md->entries[i].len;
            return md->entries[i].value;
        }
    }
    if (len)
        *len = 0;
    return NULL;
}

/* Packs msg into a new byte buffer (caller destroys). NULL when it is over
 * max bytes or allocation fails. */
static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg, size_t max, ch_status *why)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    if (n > max) {
        *why = CH_RESOURCE_EXHAUSTED;
        return NULL;
    }
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(sl));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    if (!bb)
        *why = CH_NO_MEMORY;
    return bb;
}

/* Unpacks a received buffer as desc; NULL when the bytes do not parse. */
static ProtobufCMessage *unpack_message(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
    grpc_slice_unref(sl);
    return m;
}

static void live_add(rpc_server *s, int delta)
{
    pthread_mutex_lock(&s->mu);
    s->live += delta;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Counts request tags in flight. Shutdown waits for them too: a call the core
 * has matched but a worker has not picked up yet is in no live count, and
 * destroying the server then would cancel it under the client. */
static void requests_add(rpc_server *s, int delta)
{
    pthread_mutex_lock(&s->mu);
    s->requests += delta;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* ---- unary calls ---- */

static void unary_request(rpc_server *s, rpc_worker *w, method_rec *m);

static void call_free(rpc_call *c)
{
    if (!c)
        return;
    if (c->call)
        grpc_call_unref(c->call);
    grpc_metadata_array_destroy(&c->md_in);
    if (c->payload)
        grpc_byte_buffer_destroy(c->payload);
    free(c->md.entries);
    if (c->req)
        protobuf_c_message_free_unpacked(c->req, NULL);
    for (size_t i = 0; i < c->nout; i++) {
        free(c->out_key[i]);
        free(c->out_val[i]);
    }
    if (c->send_buf)
        grpc_byte_buffer_destroy(c->send_buf);
    if (c->has_details)
        grpc_slice_unref(c->details);
    if (c->prepared_buf)
        grpc_byte_buffer_destroy(c->prepared_buf);
    free(c->prepared_details);
    free(c->path);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Takes c out of s's list of live calls; the caller holds s->mu. */
static void call_unlink_locked(rpc_server *s, rpc_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        s->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
}

/* Unlinks a finished call from the live list, frees it, then drops the live
 * count (last, so shutdown cannot run ahead of grpc_call_unref). */
static void call_release(rpc_call *c)
{
    rpc_server *s = c->s;
    pthread_mutex_lock(&s->mu);
    call_unlink_locked(s, c);
    pthread_mutex_unlock(&s->mu);
    call_free(c);
    live_add(s, -1);
}

static bool call_done_locked(const rpc_call *c)
{
    return c->close_done && c->replied && c->send_done;
}

/* Sends the one reply: initial metadata, the message when buf is set, status.
 * Takes ownership of buf. */
static void call_finish(rpc_call *c, grpc_status_code code, const char *details, grpc_byte_buffer *buf)
{
    pthread_mutex_lock(&c->mu);
    if (c->replied) {
        pthread_mutex_unlock(&c->mu);
        log_error("rpc call finished twice", "method", c->path, NULL);
        if (buf)
            grpc_byte_buffer_destroy(buf);
        return;
    }
    c->replied = true;
    if (c->abandoned) {
        /* Shutdown already cancelled and released the call; only the struct
         * waited for this reply. */
        pthread_mutex_unlock(&c->mu);
        if (buf)
            grpc_byte_buffer_destroy(buf);
        call_free(c);
        return;
    }
    for (size_t i = 0; i < c->nout; i++) {
        c->send_md[i].key = grpc_slice_from_static_string(c->out_key[i]);
        c->send_md[i].value = grpc_slice_from_static_string(c->out_val[i]);
    }
    c->send_buf = buf;
    c->details = grpc_slice_from_copied_string(details ? details : "");
    c->has_details = true;

    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = c->nout;
    ops[n].data.send_initial_metadata.metadata = c->nout ? c->send_md : NULL;
    n++;
    if (buf) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = buf;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n].data.send_status_from_server.status_details = &c->details;
    n++;
    grpc_call_error err = grpc_call_start_batch(c->call, ops, n, &c->t_send, NULL);
    if (err != GRPC_CALL_OK) {
        log_error("rpc reply batch failed", "method", c->path, "error", grpc_call_error_to_string(err), NULL);
        c->send_done = true;
    }
    bool done = call_done_locked(c);
    pthread_mutex_unlock(&c->mu);
    if (done)
        call_release(c);
}

void rpc_call_reply(rpc_call *call, const ProtobufCMessage *resp)
{
    if (!call)
        return;
    if (!resp) {
        rpc_call_fail(call, CH_INTERNAL, "handler replied without a message");
        return;
    }
    ch_status why = CH_INTERNAL;
    grpc_byte_buffer *bb = pack_message(resp, call->max_send, &why);
    if (!bb) {
        rpc_call_fail(call, why, "response %s cannot be sent (%s)", resp->descriptor->name,
                      ch_status_str(why));
        return;
    }
    call_finish(call, GRPC_STATUS_OK, "", bb);
}

/* Replaces what was prepared for c (owning buf and a copy of details). */
static void call_prepare(rpc_call *c, grpc_status_code code, const char *details, grpc_byte_buffer *buf)
{
    pthread_mutex_lock(&c->mu);
    if (c->prepared_buf)
        grpc_byte_buffer_destroy(c->prepared_buf);
    free(c->prepared_details);
    c->has_prepared = true;
    c->prepared_code = code;
    c->prepared_buf = buf;
    c->prepared_details = strdup(details ? details : "");
    pthread_mutex_unlock(&c->mu);
}

void rpc_call_prepare_reply(rpc_call *call, const ProtobufCMessage *resp)
{
    if (!call)
        return;
    ch_status why = CH_INTERNAL;
    grpc_byte_buffer *bb = resp ? pack_message(resp, call->max_send, &why) : NULL;
    if (!bb) {
        rpc_call_prepare_fail(call, why, "response %s cannot be sent (%s)",
                              resp ? resp->descriptor->name : "(none)", ch_status_str(why));
        return;
    }
    call_prepare(call, GRPC_STATUS_OK, "", bb);
}

/* The failure of rpc_call_fail and rpc_call_prepare_fail: sent now, or kept
 * for rpc_call_send_prepared. A failure never means OK (the contract). */
static void call_vfail(rpc_call *call, bool prepare, ch_status st, const char *fmt, va_list ap)
{
    char msg[RPC_DETAILS_MAX];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    grpc_status_code code = (grpc_status_code)ch_status_to_grpc(st == CH_OK ? CH_INTERNAL : st);
    if (prepare)
        call_prepare(call, code, msg, NULL);
    else
        call_finish(call, code, msg, NULL);
}

void rpc_call_prepare_fail(rpc_call *call, ch_status st, const char *fmt, ...)
{
    if (!call)
        return;
    va_list ap;
    va_start(ap, fmt);
    call_vfail(call, true, st, fmt, ap);
    va_end(ap);
}

void rpc_call_send_prepared(rpc_call *call)
{
    if (!call)
        return;
    pthread_mutex_lock(&call->mu);
    bool has = call->has_prepared;
    grpc_status_code code = call->prepared_code;
    grpc_byte_buffer *bb = call->prepared_buf;
    char *details = call->prepared_details;
    call->has_prepared = false;
    call->prepared_buf = NULL;
    call->prepared_details = NULL;
    pthread_mutex_unlock(&call->mu);
    if (!has) {
        rpc_call_fail(call, CH_INTERNAL, "no reply was prepared");
        return;
    }
    call_finish(call, code, details ? details : "", bb);
    free(details);
}

static void unary_arrived(rpc_worker *w, rpc_call *c)
{
    rpc_server *s = w->s;
    pthread_mutex_lock(&s->mu);
    s->live++;
    c->next = s->calls;
    c->prev = NULL;
    if (s->calls)
        s->calls->prev = c;
    s->calls = c;
    bool stop = atomic_load(&s->stopping);
    pthread_mutex_unlock(&s->mu);
    /* Re-request while this call keeps the live count up, so shutdown cannot
     * destroy the server under us. */
    if (!stop)
        unary_request(s, w, c->m);

    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    pthread_mutex_lock(&c->mu);
    if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK)
        c->close_done = true;
    pthread_mutex_unlock(&c->mu);

    md_copy_init(&c->md, &c->md_in);
    grpc_metadata_array_destroy(&c->md_in);
    grpc_metadata_array_init(&c->md_in);

    if (!c->payload) {
        rpc_call_fail(c, CH_INVALID_ARGUMENT, "request is missing (expected %s)", c->m->request->name);
        return;
    }
    c->req = unpack_message(c->payload, c->m->request);
    grpc_byte_buffer_destroy(c->payload);
    c->payload = NULL;
    if (!c->req) {
        rpc_call_fail(c, CH_INVALID_ARGUMENT, "request is not a valid %s", c->m->request->name);
        return;
    }
    c->m->unary(c, c->req, c->m->ctx);
}

static void unary_request(rpc_server *s, rpc_worker *w, method_rec *m)
{
    rpc_call *c = calloc(1, sizeof(*c));
    if (!c) {
        log_error("rpc request alloc failed", "method", m->path, NULL);
        return;
    }
    c->path = strdup(m->path);
    if (!c->path) {
        free(c);
        return;
    }
    c->t_new = (rpc_tag){TAG_UNARY_NEW, c};
    c->t_close = (rpc_tag){TAG_UNARY_CLOSE, c};
    c->t_send = (rpc_tag){TAG_UNARY_SEND, c};
    c->s = s;
    c->m = m;
    c->w = w;
    c->max_send = (size_t)s->opts.max_message_bytes;
    pthread_mutex_init(&c->mu, NULL);
    grpc_metadata_array_init(&c->md_in);
    requests_add(s, 1);
    grpc_call_error err = grpc_server_request_registered_call(
        s->server, m->handle, &c->call, &c->deadline, &c->md_in, &c->payload, w->cq, w->cq, &c->t_new);
    if (err != GRPC_CALL_OK) {
        requests_add(s, -1);
        log_error("rpc request_registered_call failed", "method", m->path, "error",
                  grpc_call_error_to_string(err), NULL);
        call_free(c);
    }
}

static void unary_event(rpc_worker *w, rpc_tag *t, bool ok)
{
    rpc_call *c = t->owner;
    if (t->kind == TAG_UNARY_NEW) {
        if (!ok) {
            call_free(c); /* the server is shutting down */
            return;
        }
        unary_arrived(w, c);
        return;
    }
    pthread_mutex_lock(&c->mu);
    if (t->kind == TAG_UNARY_CLOSE)
        c->close_done = true;
    else
        c->send_done = true;
    bool done = call_done_locked(c);
    pthread_mutex_unlock(&c->mu);
    if (done)
        call_release(c);
}

/* ---- unknown methods ---- */

static void generic_request(rpc_server *s, rpc_worker *w);

static void generic_free(generic_call *g)
{
    if (g->call)
        grpc_call_unref(g->call);
    grpc_call_details_destroy(&g->details);
    grpc_metadata_array_destroy(&g->md);
    grpc_slice_unref(g->status_details);
    free(g);
}

static void generic_event(rpc_worker *w, rpc_tag *t, bool ok)
{
    generic_call *g = t->owner;
    rpc_server *s = w->s;
    if (t->kind == TAG_GENERIC_DONE) {
        generic_free(g);
        live_add(s, -1);
        return;
    }
    if (!ok) {
        generic_free(g);
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->live++;
    bool stop = atomic_load(&s->stopping);
    pthread_mutex_unlock(&s->mu);
    if (!stop)
        generic_request(s, w);

    char msg[RPC_DETAILS_MAX];
    size_t ml = GRPC_SLICE_LENGTH(g->details.method);
    snprintf(msg, sizeof(msg), "unknown method %.*s", (int)(ml > 200 ? 200 : ml),
             (const char *)GRPC_SLICE_START_PTR(g->details.method));
    grpc_slice_unref(g->status_details);
    g->status_details = grpc_slice_from_copied_string(msg);

    grpc_op ops[3];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
    ops[1].data.send_status_from_server.status_details = &g->status_details;
    ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[2].data.recv_close_on_server.cancelled = &g->cancelled;
    if (grpc_call_start_batch(g->call, ops, 3, &g->t_done, NULL) != GRPC_CALL_OK) {
        generic_free(g);
        live_add(s, -1);
    }
}

static void generic_request(rpc_server *s, rpc_worker *w)
{
    generic_call *g = calloc(1, sizeof(*g));
    if (!g)
        return;
    g->t_new = (rpc_tag){TAG_GENERIC_NEW, g};
    g->t_done = (rpc_tag){TAG_GENERIC_DONE, g};
    g->w = w;
    g->status_details = grpc_empty_slice();
    grpc_call_details_init(&g->details);
    grpc_metadata_array_init(&g->md);
    requests_add(s, 1);
    if (grpc_server_request_call(s->server, &g->call, &g->details, &g->md, w->cq, w->cq, &g->t_new) !=
        GRPC_CALL_OK) {
        requests_add(s, -1);
        generic_free(g);
    }
}

/* ---- streams ---- */

static void stream_request(rpc_server *s, rpc_worker *w, method_rec *m);

static void cq_drain_destroy(grpc_completion_queue *cq)
{
    if (!cq)
        return;
    grpc_completion_queue_shutdown(cq);
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
    }
    grpc_completion_queue_destroy(cq);
}

static void stream_free(rpc_stream *st)
{
    if (!st)
        return;
    if (st->call)
        grpc_call_unref(st->call);
    cq_drain_destroy(st->cq);
    grpc_metadata_array_destroy(&st->md_in);
    if (st->payload)
        grpc_byte_buffer_destroy(st->payload);
    if (st->recv_buf)
        grpc_byte_buffer_destroy(st->recv_buf);
    free(st->md.entries);
    free(st);
}

/* Takes events from the stream's queue until `want` completes (true) or the
 * deadline passes (false). want NULL: just drain what is there by then. */
static bool stream_pump(rpc_stream *st, const rpc_tag *want, gpr_timespec deadline)
{
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(st->cq, deadline, NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            return false;
        rpc_tag *t = ev.tag;
        switch (t->kind) {
        case TAG_STREAM_CLOSE: st->close_done = true; break;
        case TAG_STREAM_RECV:
            st->recv_pending = false;
            st->recv_ok = ev.success;
            break;
        case TAG_STREAM_SEND: st->send_ok = ev.success; break;
        case TAG_STREAM_STATUS: st->status_done = true; break;
        default: break;
        }
        if (t == want)
            return true;
    }
}

static bool stream_gone(rpc_stream *st)
{
    return (st->close_done && st->cancelled) || atomic_load(&st->s->stopping);
}

static grpc_call_error stream_send_status(rpc_stream *st, grpc_status_code code, const char *details)
{
    grpc_slice d = grpc_slice_from_copied_string(details ? details : "");
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!st->md_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        st->md_sent = true;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n].data.send_status_from_server.status_details = &d;
    n++;
    grpc_call_error err = grpc_call_start_batch(st->call, ops, n, &st->t_status, NULL);
    if (err == GRPC_CALL_OK)
        stream_pump(st, &st->t_status, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    grpc_slice_unref(d);
    return err;
}

/* Waits for every batch still pending on the call so the queue can be shut
 * down empty. */
static void stream_settle(rpc_stream *st)
{
    gpr_timespec inf = gpr_inf_future(GPR_CLOCK_MONOTONIC);
    if (st->recv_pending && !stream_pump(st, &st->t_recv, deadline_in_ms(1000))) {
        grpc_call_cancel(st->call, NULL);
        stream_pump(st, &st->t_recv, inf);
    }
    if (st->close_started && !st->close_done && !stream_pump(st, &st->t_close, deadline_in_ms(5000))) {
        grpc_call_cancel(st->call, NULL);
        stream_pump(st, &st->t_close, inf);
    }
}

static void stream_start_close(rpc_stream *st)
{
    grpc_op op;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &st->cancelled;
    st->close_started = grpc_call_start_batch(st->call, &op, 1, &st->t_close, NULL) == GRPC_CALL_OK;
    if (!st->close_started)
        st->close_done = true;
}

/* Refuses a stream on the worker thread: status only, then release. */
static void stream_reject(rpc_stream *st, grpc_status_code code, const char *msg)
{
    rpc_server *s = st->s;
    stream_start_close(st);
    stream_send_status(st, code, msg);
    stream_settle(st);
    stream_free(st);
    live_add(s, -1);
}

static void *stream_main(void *arg)
{
    rpc_stream *st = arg;
    rpc_server *s = st->s;
    method_rec *m = st->m;
    ProtobufCMessage *req = NULL;
    ch_status rc = CH_OK;

    stream_start_close(st);
    md_copy_init(&st->md, &st->md_in);
    grpc_metadata_array_destroy(&st->md_in);
    grpc_metadata_array_init(&st->md_in);

    if (m->kind == RPC_SERVER_STREAM) {
        if (!st->payload) {
            rc = CH_INVALID_ARGUMENT;
            rpc_stream_set_error(st, "request is missing (expected %s)", m->request->name);
        } else {
            req = unpack_message(st->payload, m->request);
            grpc_byte_buffer_destroy(st->payload);
            st->payload = NULL;
            if (!req) {
                rc = CH_INVALID_ARGUMENT;
                rpc_stream_set_error(st, "request is not a valid %s", m->request->name);
            }
        }
    }
    if (rc == CH_OK && (m->kind == RPC_BIDI_STREAM || req))
        rc = m->stream(st, req, m->ctx);
    if (req)
        protobuf_c_message_free_unpacked(req, NULL);

    stream_pump(st, NULL, gpr_now(GPR_CLOCK_MONOTONIC));
    if (!(st->close_done && st->cancelled))
        stream_send_status(st, (grpc_status_code)ch_status_to_grpc(rc),
                           st->has_error ? st->error : (rc == CH_OK ? "" : ch_status_str(rc)));
    stream_settle(st);
    grpc_call_unref(st->call);
    st->call = NULL;
    cq_drain_destroy(st->cq);
    st->cq = NULL;

    pthread_mutex_lock(&s->mu);
    s->streams--;
    s->live--;
    st->done = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Joins stream threads that have finished (all of them when `all`). */
static void streams_reap(rpc_server *s, bool all)
{
    for (;;) {
        rpc_stream *found = NULL;
        pthread_mutex_lock(&s->mu);
        for (rpc_stream **pp = &s->stream_list; *pp; pp = &(*pp)->next) {
            if ((*pp)->done || all) {
                found = *pp;
                *pp = found->next;
                break;
            }
        }
        pthread_mutex_unlock(&s->mu);
        if (!found)
            return;
        pthread_join(found->thread, NULL);
        stream_free(found);
    }
}

static void stream_arrived(rpc_worker *w, rpc_stream *st)
{
    rpc_server *s = w->s;
    pthread_mutex_lock(&s->mu);
    s->live++;
    bool stop = atomic_load(&s->stopping);
    bool over = s->streams >= s->opts.max_streams;
    if (!stop && !over)
        s->streams++;
    pthread_mutex_unlock(&s->mu);
    if (!stop)
        stream_request(s, w, st->m);
    if (stop) {
        stream_reject(st, GRPC_STATUS_UNAVAILABLE, "server is stopping");
        return;
    }
    if (over) {
        char msg[RPC_DETAILS_MAX];
        snprintf(msg, sizeof(msg), "too many concurrent streams (max %d)", s->opts.max_streams);
        stream_reject(st, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        return;
    }
    streams_reap(s, false);
    pthread_mutex_lock(&s->mu);
    st->next = s->stream_list;
    s->stream_list = st;
    int err = pthread_create(&st->thread, NULL, stream_main, st);
    if (err != 0) {
        s->stream_list = st->next;
        s->streams--;
    }
    pthread_mutex_unlock(&s->mu);
    if (err != 0) {
        log_error("rpc stream thread failed", "method", st->m->path, "error", strerror(err), NULL);
        stream_reject(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "cannot start stream thread");
    }
}

static void stream_request(rpc_server *s, rpc_worker *w, method_rec *m)
{
    rpc_stream *st = calloc(1, sizeof(*st));
    if (!st)
        return;
    st->t_new = (rpc_tag){TAG_STREAM_NEW, st};
    st->t_close = (rpc_tag){TAG_STREAM_CLOSE, st};
    st->t_send = (rpc_tag){TAG_STREAM_SEND, st};
    st->t_recv = (rpc_tag){TAG_STREAM_RECV, st};
    st->t_status = (rpc_tag){TAG_STREAM_STATUS, st};
    st->s = s;
    st->m = m;
    st->w = w;
    grpc_metadata_array_init(&st->md_in);
    st->cq = grpc_completion_queue_create_for_next(NULL);
    requests_add(s, 1);
    grpc_call_error err = grpc_server_request_registered_call(
        s->server, m->handle, &st->call, &st->deadline, &st->md_in,
        m->kind == RPC_SERVER_STREAM ? &st->payload : NULL, st->cq, w->cq, &st->t_new);
    if (err != GRPC_CALL_OK) {
        requests_add(s, -1);
        log_error("rpc request_registered_call failed", "method", m->path, "error",
                  grpc_call_error_to_string(err), NULL);
        stream_free(st);
    }
}

/* ---- workers ---- */

static void *worker_main(void *arg)
{
    rpc_worker *w = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        rpc_tag *t = ev.tag;
        int kind = t->kind; /* t may be freed by its handler */
        switch (t->kind) {
        case TAG_UNARY_NEW:
        case TAG_UNARY_CLOSE:
        case TAG_UNARY_SEND: unary_event(w, t, ev.success); break;
        case TAG_GENERIC_NEW:
        case TAG_GENERIC_DONE: generic_event(w, t, ev.success); break;
        case TAG_STREAM_NEW:
            if (ev.success)
                stream_arrived(w, t->owner);
            else
                stream_free(t->owner);
            break;
        default: log_error("rpc worker got an unexpected tag", NULL); break;
        }
        /* After the call (if any) is counted live: the count never dips to 0 between. */
        if (kind == TAG_UNARY_NEW || kind == TAG_GENERIC_NEW || kind == TAG_STREAM_NEW)
            requests_add(w->s, -1);
    }
    return NULL;
}

/* ---- server ---- */

ch_status rpc_server_create(rpc_server **out, const rpc_server_options *opts)
{
    if (!out || !opts || !opts->listen_addr || opts->workers < 1 || opts->workers > RPC_MAX_WORKERS ||
        opts->max_message_bytes < 1 || opts->max_message_bytes > RPC_MAX_MSG_CAP || opts->max_streams < 0 ||
        opts->max_streams > RPC_MAX_STREAMS_CAP || opts->grace_ms < 0 || opts->grace_ms > RPC_MAX_GRACE_MS)
        return CH_INVALID_ARGUMENT;
    *out = NULL;
    rpc_server *s = calloc(1, sizeof(*s));
    if (!s)
        return CH_NO_MEMORY;
    s->opts = *opts;
    s->listen_addr = strdup(opts->listen_addr);
    if (!s->listen_addr) {
        free(s);
        return CH_NO_MEMORY;
    }
    s->opts.listen_addr = s->listen_addr;
    s->t_shutdown = (rpc_tag){TAG_SHUTDOWN, s};
    atomic_init(&s->stopping, false);
    pthread_mutex_init(&s->shutdown_mu, NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    *out = s;
    return CH_OK;
}

ch_status rpc_server_add_method(rpc_server *s, const rpc_method *m)
{
    if (!s || !m || !m->path || m->path[0] != '/' || !m->request || !m->response)
        return CH_INVALID_ARGUMENT;
    if ((m->kind == RPC_UNARY && !m->unary) || (m->kind != RPC_UNARY && !m->stream) ||
        (m->kind != RPC_UNARY && m->kind != RPC_SERVER_STREAM && m->kind != RPC_BIDI_STREAM))
        return CH_INVALID_ARGUMENT;
    const char *slash = strchr(m->path + 1, '/');
    if (!slash || slash == m->path + 1 || slash[1] == '\0' || strlen(m->path) > 512)
        return CH_INVALID_ARGUMENT;
    pthread_mutex_lock(&s->shutdown_mu);
    ch_status rc = CH_OK;
    if (s->started || s->shut_down) {
        rc = CH_FAILED_PRECONDITION;
        goto cleanup;
    }
    if (s->nmethods >= RPC_MAX_METHODS) {
        rc = CH_RESOURCE_EXHAUSTED;
        goto cleanup;
    }
    for (size_t i = 0; i < s->nmethods; i++) {
        if (strcmp(s->methods[i].path, m->path) == 0) {
            rc = CH_ALREADY_EXISTS;
            goto cleanup;
        }
    }
    size_t svc_len = (size_t)(slash - (m->path + 1));
    bool have_svc = false;
    for (size_t i = 0; i < s->nservices; i++)
        have_svc |= strlen(s->services[i]) == svc_len && strncmp(s->services[i], m->path + 1, svc_len) == 0;
    char *path = strdup(m->path);
    char *svc = have_svc ? NULL : strndup(m->path + 1, svc_len);
    if (!path || (!have_svc && !svc)) {
        free(path);
        free(svc);
        rc = CH_NO_MEMORY;
        goto cleanup;
    }
    if (svc)
        s->services[s->nservices++] = svc;
    method_rec *r = &s->methods[s->nmethods++];
    r->path = path;
    r->kind = m->kind;
    r->request = m->request;
    r->response = m->response;
    r->unary = m->unary;
    r->stream = m->stream;
    r->ctx = m->ctx;
cleanup:
    pthread_mutex_unlock(&s->shutdown_mu);
    return rc;
}

ch_status rpc_server_add_service(rpc_server *s, const ProtobufCServiceDescriptor *service,
                                 const rpc_handler *handlers, size_t n, void *ctx)
{
    char path[256];

    if (!s || !service || (n && !handlers))
        return CH_INVALID_ARGUMENT;
    for (size_t i = 0; i < n; i++) {
        if (!protobuf_c_service_descriptor_get_method_by_name(service, handlers[i].method)) {
            log_error("rpc handler for no such method", "service", service->name, "method",
                      handlers[i].method, NULL);
            return CH_INVALID_ARGUMENT;
        }
    }
    const rpc_handler *by_method[RPC_MAX_METHODS];
    if (service->n_methods > RPC_MAX_METHODS)
        return CH_RESOURCE_EXHAUSTED;
    /* Check everything first: on failure nothing is registered. */
    for (unsigned m = 0; m < service->n_methods; m++) {
        const ProtobufCMethodDescriptor *md = &service->methods[m];
        by_method[m] = NULL;
        for (size_t i = 0; i < n && !by_method[m]; i++)
            if (strcmp(handlers[i].method, md->name) == 0)
                by_method[m] = &handlers[i];
        if (!by_method[m]) {
            log_error("rpc method without a handler", "service", service->name, "method", md->name, NULL);
            return CH_INVALID_ARGUMENT;
        }
    }
    for (unsigned m = 0; m < service->n_methods; m++) {
        const ProtobufCMethodDescriptor *md = &service->methods[m];
        const rpc_handler *h = by_method[m];
        snprintf(path, sizeof path, "/%s/%s", service->name, md->name);
        rpc_method rm = {path, h->kind, md->input, md->output, h->unary, h->stream, ctx};
        ch_status st = rpc_server_add_method(s, &rm);
        if (st != CH_OK)
            return st;
    }
    return CH_OK;
}

const char *const *rpc_server_services(const rpc_server *s, size_t *count)
{
    if (count)
        *count = s ? s->nservices : 0;
    return s ? (const char *const *)s->services : NULL;
}

static void workers_stop(rpc_server *s)
{
    for (int i = 0; i < s->opts.workers; i++) {
        if (s->workers[i].cq)
            grpc_completion_queue_shutdown(s->workers[i].cq);
    }
    for (int i = 0; i < s->opts.workers; i++) {
        rpc_worker *w = &s->workers[i];
        if (w->running) {
            pthread_join(w->thread, NULL);
            w->running = false;
        } else if (w->cq) {
            /* a queue whose worker never ran still has to be drained */
            for (;;) {
                grpc_event ev = grpc_completion_queue_next(w->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
                if (ev.type == GRPC_QUEUE_SHUTDOWN)
                    break;
            }
        }
        if (w->cq) {
            grpc_completion_queue_destroy(w->cq);
            w->cq = NULL;
        }
    }
}

ch_status rpc_server_start(rpc_server *s)
{
    if (!s)
        return CH_INVALID_ARGUMENT;
    pthread_mutex_lock(&s->shutdown_mu);
    ch_status rc = CH_OK;
    if (s->started || s->shut_down) {
        pthread_mutex_unlock(&s->shutdown_mu);
        return CH_FAILED_PRECONDITION;
    }
    grpc_init();
    grpc_arg args[3];
    memset(args, 0, sizeof(args));
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
    args[0].value.integer = 0;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[1].value.integer = s->opts.max_message_bytes;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[2].value.integer = s->opts.max_message_bytes;
    grpc_channel_args cargs = {3, args};
    s->server = grpc_server_create(&cargs, NULL);
    for (size_t i = 0; i < s->nmethods; i++) {
        method_rec *m = &s->methods[i];
        grpc_server_register_method_payload_handling ph =
            m->kind == RPC_BIDI_STREAM ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER;
        m->handle = grpc_server_register_method(s->server, m->path, NULL, ph, 0);
        if (!m->handle) {
            log_error("rpc register_method failed", "method", m->path, NULL);
            rc = CH_INTERNAL;
            goto cleanup;
        }
    }
    for (int i = 0; i < s->opts.workers; i++) {
        s->workers[i].s = s;
        s->workers[i].cq = grpc_completion_queue_create_for_next(NULL);
        grpc_server_register_completion_queue(s->server, s->workers[i].cq, NULL);
    }
    s->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->server, s->shutdown_cq, NULL);

    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    s->port = grpc_server_add_http2_port(s->server, s->listen_addr, creds);
    grpc_server_credentials_release(creds);
    if (s->port <= 0) {
        log_error("rpc server cannot bind", "addr", s->listen_addr, NULL);
        rc = CH_UNAVAILABLE;
        goto cleanup;
    }
    for (int i = 0; i < s->opts.workers; i++) {
        int err = pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]);
        if (err != 0) {
            log_error("rpc worker thread failed", "error", strerror(err), NULL);
            rc = CH_INTERNAL;
            goto cleanup;
        }
        s->workers[i].running = true;
    }
    grpc_server_start(s->server);
    s->started = true;
    for (int i = 0; i < s->opts.workers; i++) {
        rpc_worker *w = &s->workers[i];
        generic_request(s, w);
        for (size_t j = 0; j < s->nmethods; j++) {
            if (s->methods[j].kind != RPC_UNARY)
                continue;
            for (int k = 0; k < RPC_UNARY_BACKLOG; k++)
                unary_request(s, w, &s->methods[j]);
        }
    }
    for (size_t j = 0; j < s->nmethods; j++) {
        if (s->methods[j].kind == RPC_UNARY)
            continue;
        for (int k = 0; k < RPC_STREAM_BACKLOG; k++)
            stream_request(s, &s->workers[(j + (size_t)k) % (size_t)s->opts.workers], &s->methods[j]);
    }
    char port[16], workers[16];
    snprintf(port, sizeof(port), "%d", s->port);
    snprintf(workers, sizeof(workers), "%d", s->opts.workers);
    log_info("rpc server started", "addr", s->listen_addr, "port", port, "workers", workers, NULL);

cleanup:
    if (rc != CH_OK) {
        /* never started: no calls exist, so the server can go at once */
        grpc_server_destroy(s->server);
        s->server = NULL;
        workers_stop(s);
        cq_drain_destroy(s->shutdown_cq);
        s->shutdown_cq = NULL;
        s->port = 0;
        grpc_shutdown_blocking();
    }
    pthread_mutex_unlock(&s->shutdown_mu);
    return rc;
}

int rpc_server_port(const rpc_server *s)
{
    return s ? s->port : 0;
}

void rpc_block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int rpc_server_run(rpc_server *s)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    log_info("rpc server got signal", "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
    rpc_server_shutdown(s);
    return sig;
}

/* After cancel_all_calls: calls whose close completed but whose handler has
 * not replied are released from grpc and left for the late reply to free. */
static void calls_abandon_locked(rpc_server *s)
{
    rpc_call *c = s->calls;
    while (c) {
        rpc_call *next = c->next;
        pthread_mutex_lock(&c->mu);
        if (c->close_done && !c->replied) {
            c->abandoned = true;
            call_unlink_locked(s, c);
            grpc_call_unref(c->call);
            c->call = NULL;
            c->s = NULL;
            s->live--;
        }
        pthread_mutex_unlock(&c->mu);
        c = next;
    }
}

void rpc_server_shutdown(rpc_server *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->shutdown_mu);
    if (!s->started || s->shut_down) {
        pthread_mutex_unlock(&s->shutdown_mu);
        return;
    }
    atomic_store(&s->stopping, true);
    grpc_server_shutdown_and_notify(s->server, s->shutdown_cq, &s->t_shutdown);

    gpr_timespec grace_end = deadline_in_ms(s->opts.grace_ms);
    bool tag_seen = false, cancelled = false, cut_idle = false;
    for (;;) {
        if (!tag_seen) {
            grpc_event ev = grpc_completion_queue_next(s->shutdown_cq, deadline_in_ms(20), NULL);
            tag_seen = ev.type == GRPC_OP_COMPLETE;
        }
        pthread_mutex_lock(&s->mu);
        if (cancelled)
            calls_abandon_locked(s);
        bool idle = s->live == 0 && s->requests == 0;
        if (tag_seen && !idle) {
            gpr_timespec until = gpr_convert_clock_type(deadline_in_ms(20), GPR_CLOCK_REALTIME);
            struct timespec ts = {until.tv_sec, until.tv_nsec};
            pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            idle = s->live == 0 && s->requests == 0;
        }
        pthread_mutex_unlock(&s->mu);
        if (tag_seen && idle)
            break;
        if (idle && !cancelled && !cut_idle) {
            /* Every call of ours is done, yet the tag waits for clients to
             * close their idle connections, which they may never do: cut
             * them (there is nothing left to cancel). */
            grpc_server_cancel_all_calls(s->server);
            cut_idle = true;
            continue;
        }
        if (!cancelled && gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), grace_end) >= 0) {
            log_warn("rpc shutdown grace over, cancelling calls", NULL);
            grpc_server_cancel_all_calls(s->server);
            cancelled = true;
        }
    }
    grpc_server_destroy(s->server);
    s->server = NULL;
    workers_stop(s);
    cq_drain_destroy(s->shutdown_cq);
    s->shutdown_cq = NULL;
    streams_reap(s, true);
    grpc_shutdown_blocking();
    s->shut_down = true;
    log_info("rpc server stopped", "addr", s->listen_addr, "calls_cancelled", cancelled ? "yes" : "no", NULL);
    pthread_mutex_unlock(&s->shutdown_mu);
}

bool rpc_server_stopping(const rpc_server *s)
{
    return s && atomic_load(&((rpc_server *)s)->stopping);
}

void rpc_server_destroy(rpc_server *s)
{
    if (!s)
        return;
    rpc_server_shutdown(s);
    for (size_t i = 0; i < s->nmethods; i++)
        free(s->methods[i].path);
    for (size_t i = 0; i < s->nservices; i++)
        free(s->services[i]);
    free(s->listen_addr);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->shutdown_mu);
    free(s);
}

/* ---- unary call API ---- */

void rpc_call_fail(rpc_call *call, ch_status st, const char *fmt, ...)
{
    if (!call)
        return;
    va_list ap;
    va_start(ap, fmt);
    call_vfail(call, false, st, fmt, ap);
    va_end(ap);
}

const char *rpc_call_metadata(const rpc_call *call, const char *key, size_t *len)
{
    if (!call) {
        if (len)
            *len = 0;
        return NULL;
    }
    return md_copy_find(&call->md, key, len);
}

void rpc_call_add_metadata(rpc_call *call, const char *key, const char *value)
{
    if (!call || !key || !value)
        return;
    pthread_mutex_lock(&call->mu);
    size_t add = strlen(key) + strlen(value);
    if (!call->replied && call->nout < RPC_MAX_OUT_MD && call->out_bytes + add <= RPC_MAX_OUT_MD_BYTES) {
        char *k = strdup(key), *v = strdup(value);
        if (k && v) {
            call->out_key[call->nout] = k;
            call->out_val[call->nout] = v;
            call->nout++;
            call->out_bytes += add;
        } else {
            free(k);
            free(v);
        }
    }
    pthread_mutex_unlock(&call->mu);
}

int64_t rpc_call_remaining_ms(const rpc_call *call)
{
    if (!call)
        return INT64_MAX;
    if (gpr_time_cmp(call->deadline, gpr_inf_future(call->deadline.clock_type)) == 0)
        return INT64_MAX;
    gpr_timespec d = gpr_convert_clock_type(call->deadline, GPR_CLOCK_MONOTONIC);
    gpr_timespec left = gpr_time_sub(d, gpr_now(GPR_CLOCK_MONOTONIC));
    int64_t ms = gpr_time_to_millis(left);
    return ms < 0 ? 0 : ms;
}

static size_t varint_bytes(size_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

size_t rpc_call_fit_items(const rpc_call *call, const ProtobufCMessage *rest, size_t token_max,
                          ProtobufCMessage *const *items, size_t n)
{
    size_t used = protobuf_c_message_get_packed_size(rest) + 1 + varint_bytes(token_max) + token_max;
    size_t k = 0;
    for (; k < n; k++) {
        size_t len = protobuf_c_message_get_packed_size(items[k]);
        used += 1 + varint_bytes(len) + len; /* tag of a field numbered 1..15, length, body */
        if (used > call->max_send)
            break;
    }
    return k == 0 && n > 0 ? 1 : k;
}

const char *rpc_call_method(const rpc_call *call)
{
    return call ? call->path : NULL;
}

/* ---- stream API ---- */

ch_status rpc_stream_send(rpc_stream *st, const ProtobufCMessage *msg)
{
    if (!st || !msg)
        return CH_INVALID_ARGUMENT;
    stream_pump(st, NULL, gpr_now(GPR_CLOCK_MONOTONIC));
    if (stream_gone(st))
        return CH_CANCELLED;
    ch_status why = CH_INTERNAL;
    grpc_byte_buffer *bb = pack_message(msg, (size_t)st->s->opts.max_message_bytes, &why);
    if (!bb)
        return why;
    grpc_op ops[2];
    size_t n = 0;
    memset(ops, 0, sizeof(ops));
    if (!st->md_sent)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = bb;
    n++;
    ch_status rc = CH_OK;
    if (grpc_call_start_batch(st->call, ops, n, &st->t_send, NULL) != GRPC_CALL_OK) {
        rc = CH_INTERNAL;
        goto cleanup;
    }
    st->md_sent = true;
    /* Flow control may hold the send; a cancel (client, deadline or the end
     * of the shutdown grace) always completes it. */
    stream_pump(st, &st->t_send, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    if (!st->send_ok)
        rc = CH_CANCELLED;
cleanup:
    grpc_byte_buffer_destroy(bb);
    return rc;
}

ch_status rpc_stream_recv(rpc_stream *st, ProtobufCMessage **out, int timeout_ms)
{
    if (!st || !out)
        return CH_INVALID_ARGUMENT;
    *out = NULL;
    if (st->m->kind != RPC_BIDI_STREAM)
        return CH_FAILED_PRECONDITION;
    if (!st->recv_pending) {
        if (stream_gone(st))
            return CH_CANCELLED;
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &st->recv_buf;
        if (grpc_call_start_batch(st->call, &op, 1, &st->t_recv, NULL) != GRPC_CALL_OK)
            return CH_CANCELLED; /* e.g. after the client's half-close was seen */
        st->recv_pending = true;
    }
    gpr_timespec end = deadline_in_ms(timeout_ms);
    for (;;) {
        if (stream_pump(st, &st->t_recv, earlier(end, deadline_in_ms(RPC_POLL_MS))))
            break;
        if (atomic_load(&st->s->stopping) || (st->close_done && st->cancelled))
            return CH_CANCELLED;
        if (gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), end) >= 0)
            return CH_TIMEOUT;
    }
    if (!st->recv_buf)
        return (st->recv_ok && !(st->close_done && st->cancelled)) ? CH_OK : CH_CANCELLED;
    *out = unpack_message(st->recv_buf, st->m->request);
    grpc_byte_buffer_destroy(st->recv_buf);
    st->recv_buf = NULL;
    if (!*out) {
        rpc_stream_set_error(st, "request is not a valid %s", st->m->request->name);
        return CH_INVALID_ARGUMENT;
    }
    return CH_OK;
}

bool rpc_stream_wait_cancelled(rpc_stream *st, int timeout_ms)
{
    if (!st)
        return true;
    gpr_timespec end = deadline_in_ms(timeout_ms);
    for (;;) {
        if (!st->close_done)
            stream_pump(st, &st->t_close, earlier(end, deadline_in_ms(RPC_POLL_MS)));
        if (stream_gone(st) || st->close_done)
            return true;
        if (gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), end) >= 0)
            return false;
    }
}

void rpc_stream_set_error(rpc_stream *st, const char *fmt, ...)
{
    if (!st)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->error, sizeof(st->error), fmt, ap);
    va_end(ap);
    st->has_error = true;
}

const char *rpc_stream_metadata(const rpc_stream *st, const char *key, size_t *len)
{
    if (!st) {
        if (len)
            *len = 0;
        return NULL;
    }
    return md_copy_find(&st->md, key, len);
}
