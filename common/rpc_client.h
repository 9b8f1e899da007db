/* rpc_client.h: a small blocking gRPC client over the gRPC C core API, for
 * tests, the CLI and the benchmark.
 *
 * One rpc_client holds one insecure channel; any number of threads may call
 * on it at once (each call has its own completion queue). Calls block until
 * the reply, the status or the timeout.
 *
 * Ownership: the caller owns what it passes in and everything returned
 * through an out pointer (free responses with protobuf_c_message_free_unpacked,
 * raw bytes with free); rpc_client_result is caller-allocated and filled in.
 *
 * Streams: rpc_client_stream reads a server stream (one request, many
 * responses). There is no bidi helper: bidi (reflection) is tested with
 * python3-grpcio. */
#ifndef CHOREO_RPC_CLIENT_H
#define CHOREO_RPC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "status.h"

#define RPC_CLIENT_MAX_MD       32 /* metadata pairs sent per call */
#define RPC_CLIENT_RESULT_MD    8  /* response initial metadata kept */
#define RPC_CLIENT_MAX_RESPONSE (64 * 1024 * 1024)

typedef struct rpc_client rpc_client;
typedef struct rpc_client_stream rpc_client_stream;

/* One metadata pair to send; key lowercase. */
typedef struct rpc_md {
    const char *key;
    const char *value;
} rpc_md;

/* What came back besides the message. */
typedef struct rpc_client_result {
    int code;          /* grpc_status_code; 0 = OK */
    char details[512]; /* grpc-message, cut to fit, NUL-terminated */
    size_t nmd;        /* response initial metadata kept (the first few) */
    struct {
        char key[64];
        char value[192];
    } md[RPC_CLIENT_RESULT_MD];
} rpc_client_result;

/* Opens an insecure channel to target ("127.0.0.1:50051"). Connection happens
 * lazily on the first call. */
ch_status rpc_client_create(rpc_client **out, const char *target);

/* Closes the channel. Every call and stream must have ended. Accepts NULL. */
void rpc_client_destroy(rpc_client *c);

/* Unary call: sends req with md, waits up to timeout_ms (-1: no deadline).
 * Returns CH_OK when the status is OK and the reply parsed as resp_desc (then
 * *resp_out is the caller's); otherwise ch_status_from_grpc(status) (or
 * CH_INTERNAL for a reply that does not parse) and *resp_out is NULL. res may
 * be NULL. Any thread. */
ch_status rpc_client_call(rpc_client *c, const char *method_path, const rpc_md *md, size_t nmd,
                          const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
                          ProtobufCMessage **resp_out, int timeout_ms, rpc_client_result *res);

/* Like rpc_client_call with raw bytes both ways (to send malformed input).
 * *resp_out (malloc'd, may be NULL with *resp_len 0 for an empty reply) is the
 * caller's; resp_out/resp_len may be NULL to ignore the reply. */
ch_status rpc_client_call_raw(rpc_client *c, const char *method_path, const rpc_md *md, size_t nmd,
                              const void *data, size_t len, void **resp_out, size_t *resp_len, int timeout_ms,
                              rpc_client_result *res);

/* Starts a server-streaming call with one request; timeout_ms bounds the
 * whole stream (-1: none). The stream is the caller's: close it. */
ch_status rpc_client_stream_open(rpc_client *c, const char *method_path, const rpc_md *md, size_t nmd,
                                 const ProtobufCMessage *req, int timeout_ms, rpc_client_stream **out);

/* Reads the next message, waiting up to timeout_ms (-1: forever).
 *   CH_OK with *msg set: a message (the caller's).
 *   CH_OK with *msg NULL: the stream has ended; see rpc_client_stream_result.
 *   CH_TIMEOUT: nothing yet, the stream goes on; call again.
 *   CH_INTERNAL: a message that does not parse (the stream goes on).
 * Thread of the caller that owns the stream. */
ch_status rpc_client_stream_next(rpc_client_stream *st, const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **msg, int timeout_ms);

/* After the end: copies the final status into *res and returns
 * ch_status_from_grpc(code). CH_FAILED_PRECONDITION while not ended. */
ch_status rpc_client_stream_result(const rpc_client_stream *st, rpc_client_result *res);

/* Cancels the stream if it has not ended, waits for its operations and frees
 * it. Accepts NULL. */
void rpc_client_stream_close(rpc_client_stream *st);

/* Value of response initial metadata `key` kept in res, or NULL. */
const char *rpc_client_result_md(const rpc_client_result *res, const char *key);

#endif
