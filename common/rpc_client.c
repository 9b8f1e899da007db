/* rpc_client.c: blocking unary and server-streaming calls over the gRPC C
 * core API. Each unary call uses a pluck queue of its own, so calls from many
 * threads never share a queue; a stream owns a next queue polled only by the
 * thread that reads it. */
#include "rpc_client.h"

#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>

#define RPC_CLIENT_MAX_PATH 512

struct rpc_client {
    grpc_channel *channel;
};

struct rpc_client_stream {
    grpc_completion_queue *cq;
    grpc_call *call;
    char t_send, t_status, t_recv; /* their addresses are the tags */
    grpc_metadata send_md[RPC_CLIENT_MAX_MD];
    size_t nmd;
    grpc_byte_buffer *send_buf;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *recv_buf;
    bool send_pending, status_pending, recv_pending, ended;
    rpc_client_result result;
};

ch_status rpc_client_create(rpc_client **out, const char *target)
{
    if (!out || !target || !*target)
        return CH_INVALID_ARGUMENT;
    *out = NULL;
    rpc_client *c = calloc(1, sizeof(*c));
    if (!c)
        return CH_NO_MEMORY;
    grpc_init();
    grpc_arg arg;
    memset(&arg, 0, sizeof(arg));
    arg.type = GRPC_ARG_INTEGER;
    arg.key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    arg.value.integer = RPC_CLIENT_MAX_RESPONSE;
    grpc_channel_args args = {1, &arg};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    c->channel = grpc_channel_create(target, creds, &args);
    grpc_channel_credentials_release(creds);
    if (!c->channel) {
        free(c);
        grpc_shutdown_blocking();
        return CH_INVALID_ARGUMENT;
    }
    *out = c;
    return CH_OK;
}

void rpc_client_destroy(rpc_client *c)
{
    if (!c)
        return;
    grpc_channel_destroy(c->channel);
    free(c);
    grpc_shutdown_blocking();
}

/* ---- shared helpers ---- */

static void result_reset(rpc_client_result *res)
{
    if (!res)
        return;
    res->code = GRPC_STATUS_UNKNOWN;
    res->details[0] = '\0';
    res->nmd = 0;
}

static void result_fill(rpc_client_result *res, grpc_status_code code, grpc_slice details,
                        const grpc_metadata_array *md)
{
    if (!res)
        return;
    res->code = (int)code;
    size_t n = GRPC_SLICE_LENGTH(details);
    if (n >= sizeof(res->details))
        n = sizeof(res->details) - 1;
    memcpy(res->details, GRPC_SLICE_START_PTR(details), n);
    res->details[n] = '\0';
    res->nmd = 0;
    for (size_t i = 0; md && i < md->count && res->nmd < RPC_CLIENT_RESULT_MD; i++) {
        size_t kl = GRPC_SLICE_LENGTH(md->metadata[i].key), vl = GRPC_SLICE_LENGTH(md->metadata[i].value);
        if (kl >= sizeof(res->md[0].key) || vl >= sizeof(res->md[0].value))
            continue;
        memcpy(res->md[res->nmd].key, GRPC_SLICE_START_PTR(md->metadata[i].key), kl);
        res->md[res->nmd].key[kl] = '\0';
        memcpy(res->md[res->nmd].value, GRPC_SLICE_START_PTR(md->metadata[i].value), vl);
        res->md[res->nmd].value[vl] = '\0';
        res->nmd++;
    }
}

const char *rpc_client_result_md(const rpc_client_result *res, const char *key)
{
    for (size_t i = 0; res && key && i < res->nmd; i++) {
        if (strcmp(res->md[i].key, key) == 0)
            return res->md[i].value;
    }
    return NULL;
}

static gpr_timespec client_deadline(int timeout_ms)
{
    if (timeout_ms < 0)
        return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

/* Copies md into grpc metadata with refcounted slices (the core may keep
 * them past the batch); unref with md_release. */
static void md_build(grpc_metadata *out, const rpc_md *md, size_t nmd)
{
    for (size_t i = 0; i < nmd; i++) {
        out[i].key = grpc_slice_from_copied_string(md[i].key);
        out[i].value = grpc_slice_from_copied_string(md[i].value);
    }
}

static void md_release(grpc_metadata *m, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        grpc_slice_unref(m[i].key);
        grpc_slice_unref(m[i].value);
    }
}

static bool md_valid(const rpc_md *md, size_t nmd)
{
    if (nmd > RPC_CLIENT_MAX_MD || (nmd && !md))
        return false;
    for (size_t i = 0; i < nmd; i++) {
        if (!md[i].key || !md[i].value)
            return false;
    }
    return true;
}

static grpc_byte_buffer *buffer_from(const void *data, size_t len)
{
    grpc_slice sl = len ? grpc_slice_from_copied_buffer(data, len) : grpc_empty_slice();
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    return bb;
}

static grpc_call *call_create(rpc_client *c, grpc_completion_queue *cq, const char *path, int timeout_ms)
{
    grpc_slice method = grpc_slice_from_copied_string(path);
    grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                               client_deadline(timeout_ms), NULL);
    grpc_slice_unref(method);
    return call;
}

static void cq_finish(grpc_completion_queue *cq, bool pluck)
{
    grpc_completion_queue_shutdown(cq);
    for (;;) {
        grpc_event ev = pluck
                            ? grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                            : grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
    }
    grpc_completion_queue_destroy(cq);
}

/* One unary exchange. send is the caller's; *recv (may stay NULL) is the
 * caller's to destroy. */
static ch_status unary_exchange(rpc_client *c, const char *path, const rpc_md *md, size_t nmd,
                                grpc_byte_buffer *send, grpc_byte_buffer **recv, int timeout_ms,
                                rpc_client_result *res)
{
    ch_status rc = CH_OK;
    grpc_metadata smd[RPC_CLIENT_MAX_MD];
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_metadata_array_init(&initial_md);
    grpc_metadata_array_init(&trailing_md);
    md_build(smd, md, nmd);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_call *call = call_create(c, cq, path, timeout_ms);
    if (!call) {
        rc = CH_INTERNAL;
        goto cleanup;
    }
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = nmd ? smd : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    if (grpc_call_start_batch(call, ops, 6, call, NULL) != GRPC_CALL_OK) {
        rc = CH_INTERNAL;
        goto cleanup;
    }
    grpc_completion_queue_pluck(cq, call, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    result_fill(res, status, details, &initial_md);
    rc = ch_status_from_grpc(status);
cleanup:
    if (call)
        grpc_call_unref(call);
    cq_finish(cq, true);
    md_release(smd, nmd);
    grpc_metadata_array_destroy(&initial_md);
    grpc_metadata_array_destroy(&trailing_md);
    grpc_slice_unref(details);
    return rc;
}

/* Reads a whole byte buffer into one slice (caller unrefs). */
static grpc_slice buffer_read(grpc_byte_buffer *bb)
{
    grpc_byte_buffer_reader r;
    if (!grpc_byte_buffer_reader_init(&r, bb))
        return grpc_empty_slice();
    grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    return sl;
}

ch_status rpc_client_call(rpc_client *c, const char *method_path, const rpc_md *md, size_t nmd,
                          const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                          ProtobufCMessage **resp_out, int timeout_ms, rpc_client_result *res)
{
    result_reset(res);
    if (resp_out)
        *resp_out = NULL;
    if (!c || !method_path || strlen(method_path) > RPC_CLIENT_MAX_PATH || !req || !resp_desc || !resp_out ||
        !md_valid(md, nmd))
        return CH_INVALID_ARGUMENT;
    size_t n = protobuf_c_message_get_packed_size(req);
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(sl));
    grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    grpc_byte_buffer *recv = NULL;
    ch_status rc = unary_exchange(c, method_path, md, nmd, send, &recv, timeout_ms, res);
    if (rc == CH_OK) {
        if (!recv) {
            rc = CH_INTERNAL;
        } else {
            grpc_slice body = buffer_read(recv);
            *resp_out = protobuf_c_message_unpack(resp_desc, NULL, GRPC_SLICE_LENGTH(body),
                                                  GRPC_SLICE_START_PTR(body));
            grpc_slice_unref(body);
            if (!*resp_out)
                rc = CH_INTERNAL;
        }
    }
    if (recv)
        grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(send);
    return rc;
}

ch_status rpc_client_call_raw(rpc_client *c, const char *method_path, const rpc_md *md, size_t nmd,
                              const void *data, size_t len, void **resp_out, size_t *resp_len, int timeout_ms,
                              rpc_client_result *res)
{
    result_reset(res);
    if (resp_out)
        *resp_out = NULL;
    if (resp_len)
        *resp_len = 0;
    if (!c || !method_path || strlen(method_path) > RPC_CLIENT_MAX_PATH || (len && !data) ||
        len > RPC_CLIENT_MAX_RESPONSE || !md_valid(md, nmd))
        return CH_INVALID_ARGUMENT;
    grpc_byte_buffer *send = buffer_from(data, len);
    grpc_byte_buffer *recv = NULL;
    ch_status rc = unary_exchange(c, method_path, md, nmd, send, &recv, timeout_ms, res);
    if (recv && resp_out) {
        grpc_slice body = buffer_read(recv);
        size_t n = GRPC_SLICE_LENGTH(body);
        if (n) {
            *resp_out = malloc(n);
            if (*resp_out) {
                memcpy(*resp_out, GRPC_SLICE_START_PTR(body), n);
                if (resp_len)
                    *resp_len = n;
            } else {
                rc = CH_NO_MEMORY;
            }
        }
        grpc_slice_unref(body);
    }
    if (recv)
        grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(send);
    return rc;
}

/* ---- server streams ---- */

/* Takes events until `want` completes (true) or the deadline (false); with
 * want NULL, returns after any one event. */
static bool stream_pump(rpc_client_stream *st, const void *want, gpr_timespec deadline)
{
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(st->cq, deadline, NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            return false;
        if (ev.tag == &st->t_send)
            st->send_pending = false;
        else if (ev.tag == &st->t_status)
            st->status_pending = false;
        else if (ev.tag == &st->t_recv)
            st->recv_pending = false;
        if (!want || ev.tag == want)
            return true;
    }
}

static void stream_free(rpc_client_stream *st)
{
    if (st->call)
        grpc_call_unref(st->call);
    if (st->cq)
        cq_finish(st->cq, false);
    md_release(st->send_md, st->nmd);
    if (st->send_buf)
        grpc_byte_buffer_destroy(st->send_buf);
    if (st->recv_buf)
        grpc_byte_buffer_destroy(st->recv_buf);
    grpc_metadata_array_destroy(&st->initial_md);
    grpc_metadata_array_destroy(&st->trailing_md);
    grpc_slice_unref(st->details);
    free(st);
}

ch_status rpc_client_stream_open(rpc_client *c, const char *method_path, const rpc_md *md, size_t nmd,
                                 const ProtobufCMessage *req, int timeout_ms, rpc_client_stream **out)
{
    if (out)
        *out = NULL;
    if (!c || !method_path || strlen(method_path) > RPC_CLIENT_MAX_PATH || !req || !out || !md_valid(md, nmd))
        return CH_INVALID_ARGUMENT;
    rpc_client_stream *st = calloc(1, sizeof(*st));
    if (!st)
        return CH_NO_MEMORY;
    ch_status rc = CH_OK;
    st->details = grpc_empty_slice();
    st->status = GRPC_STATUS_UNKNOWN;
    grpc_metadata_array_init(&st->initial_md);
    grpc_metadata_array_init(&st->trailing_md);
    md_build(st->send_md, md, nmd);
    st->nmd = nmd;
    result_reset(&st->result);
    size_t n = protobuf_c_message_get_packed_size(req);
    grpc_slice sl = grpc_slice_malloc(n);
    protobuf_c_message_pack(req, GRPC_SLICE_START_PTR(sl));
    st->send_buf = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_slice_unref(sl);
    st->cq = grpc_completion_queue_create_for_next(NULL);
    st->call = call_create(c, st->cq, method_path, timeout_ms);
    if (!st->call) {
        rc = CH_INTERNAL;
        goto cleanup;
    }
    grpc_op ops[4];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = nmd;
    ops[0].data.send_initial_metadata.metadata = nmd ? st->send_md : NULL;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = st->send_buf;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &st->initial_md;
    if (grpc_call_start_batch(st->call, ops, 4, &st->t_send, NULL) != GRPC_CALL_OK) {
        rc = CH_INTERNAL;
        goto cleanup;
    }
    st->send_pending = true;
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &st->trailing_md;
    ops[0].data.recv_status_on_client.status = &st->status;
    ops[0].data.recv_status_on_client.status_details = &st->details;
    if (grpc_call_start_batch(st->call, ops, 1, &st->t_status, NULL) != GRPC_CALL_OK) {
        rc = CH_INTERNAL;
        goto cleanup;
    }
    st->status_pending = true;
cleanup:
    if (rc != CH_OK) {
        rpc_client_stream_close(st);
        return rc;
    }
    *out = st;
    return CH_OK;
}

/* The stream ended (no more messages): wait for the status and keep it. */
static void stream_end(rpc_client_stream *st)
{
    gpr_timespec inf = gpr_inf_future(GPR_CLOCK_REALTIME);
    if (st->status_pending)
        stream_pump(st, &st->t_status, inf);
    if (st->send_pending)
        stream_pump(st, &st->t_send, inf);
    result_fill(&st->result, st->status, st->details, &st->initial_md);
    st->ended = true;
}

ch_status rpc_client_stream_next(rpc_client_stream *st, const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **msg, int timeout_ms)
{
    if (msg)
        *msg = NULL;
    if (!st || !resp_desc || !msg)
        return CH_INVALID_ARGUMENT;
    if (st->ended)
        return CH_OK;
    if (!st->recv_pending) {
        grpc_op op;
        memset(&op, 0, sizeof(op));
        op.op = GRPC_OP_RECV_MESSAGE;
        op.data.recv_message.recv_message = &st->recv_buf;
        if (grpc_call_start_batch(st->call, &op, 1, &st->t_recv, NULL) != GRPC_CALL_OK) {
            stream_end(st);
            return CH_OK;
        }
        st->recv_pending = true;
    }
    gpr_timespec deadline = timeout_ms < 0 ? gpr_inf_future(GPR_CLOCK_REALTIME) : client_deadline(timeout_ms);
    if (!stream_pump(st, &st->t_recv, deadline))
        return CH_TIMEOUT;
    if (!st->recv_buf) {
        stream_end(st);
        return CH_OK;
    }
    grpc_slice body = buffer_read(st->recv_buf);
    grpc_byte_buffer_destroy(st->recv_buf);
    st->recv_buf = NULL;
    *msg = protobuf_c_message_unpack(resp_desc, NULL, GRPC_SLICE_LENGTH(body), GRPC_SLICE_START_PTR(body));
    grpc_slice_unref(body);
    return *msg ? CH_OK : CH_INTERNAL;
}

ch_status rpc_client_stream_result(const rpc_client_stream *st, rpc_client_result *res)
{
    if (!st)
        return CH_INVALID_ARGUMENT;
    if (!st->ended)
        return CH_FAILED_PRECONDITION;
    if (res)
        *res = st->result;
    return ch_status_from_grpc(st->result.code);
}

void rpc_client_stream_close(rpc_client_stream *st)
{
    if (!st)
        return;
    if (st->call && (st->send_pending || st->status_pending || st->recv_pending)) {
        grpc_call_cancel(st->call, NULL);
        gpr_timespec inf = gpr_inf_future(GPR_CLOCK_REALTIME);
        while (st->send_pending || st->status_pending || st->recv_pending)
            stream_pump(st, NULL, inf);
    }
    stream_free(st);
}
