/* rpc_server.h: a gRPC server runtime over the gRPC C core API (no C++).
 *
 * Methods are registered with typed handlers before rpc_server_start. Unary
 * calls are driven as small state machines by worker threads, each owning one
 * completion queue; a unary handler runs on a worker thread and must not block
 * for long (it stalls its queue). It finishes the call exactly once with
 * rpc_call_reply or rpc_call_fail, either before returning or later from any
 * thread (deferred reply, e.g. when a JetStream PubAck arrives).
 *
 * Streaming calls (server stream, bidi) each run on a thread of their own with
 * a blocking API, up to a cap (max_streams); past it they get
 * RESOURCE_EXHAUSTED.
 *
 * Unknown methods get UNIMPLEMENTED at once. Messages over max_message_bytes
 * get RESOURCE_EXHAUSTED from the core; bytes that do not parse as the request
 * type get INVALID_ARGUMENT naming the type. SO_REUSEPORT is off, so a busy
 * port makes rpc_server_start fail.
 *
 * Shutdown (rpc_server_shutdown, or SIGTERM/SIGINT through rpc_server_run):
 * new calls are refused, in-flight calls (deferred ones included) get
 * grace_ms to finish, then the rest are cancelled; stream handlers see
 * rpc_stream_wait_cancelled() return true.
 *
 * Ownership: the server owns its calls and streams; a request message passed
 * to a handler is valid until the handler returns (unary: until the call is
 * finished); response messages passed to reply/send are serialized at once and
 * stay the caller's. */
#ifndef CHOREO_RPC_SERVER_H
#define CHOREO_RPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "status.h"

typedef struct rpc_server rpc_server;
typedef struct rpc_call rpc_call;     /* one unary call in flight */
typedef struct rpc_stream rpc_stream; /* one streaming call in flight */

typedef enum rpc_kind {
    RPC_UNARY = 0,
    RPC_SERVER_STREAM, /* one request, many responses */
    RPC_BIDI_STREAM,   /* many requests, many responses (reflection) */
} rpc_kind;

/* Unary handler: decode done, request valid until the call is finished. Must
 * call rpc_call_reply or rpc_call_fail exactly once, now or later. */
typedef void (*rpc_unary_fn)(rpc_call *call, const ProtobufCMessage *req, void *ctx);

/* Streaming handler, on its own thread. For RPC_SERVER_STREAM `req` is the one
 * request; for RPC_BIDI_STREAM it is NULL and the handler reads requests with
 * rpc_stream_recv. The returned status (with rpc_stream_set_error's message)
 * ends the call. */
typedef ch_status (*rpc_stream_fn)(rpc_stream *st, const ProtobufCMessage *req, void *ctx);

typedef struct rpc_method {
    const char *path; /* "/choreo.orders.v1.Orders/CreateOrder"; copied */
    rpc_kind kind;
    const ProtobufCMessageDescriptor *request;  /* type of incoming messages */
    const ProtobufCMessageDescriptor *response; /* type of outgoing messages */
    rpc_unary_fn unary;                         /* for RPC_UNARY */
    rpc_stream_fn stream;                       /* for the streaming kinds */
    void *ctx;                                  /* passed to the handler */
} rpc_method;

typedef struct rpc_server_options {
    const char *listen_addr; /* "0.0.0.0:50051"; port 0 picks a free one */
    int workers;             /* worker threads, one completion queue each: 1..64 */
    int max_message_bytes;   /* receive and send cap */
    int max_streams;         /* concurrent streaming calls */
    int grace_ms;            /* shutdown: time in-flight calls get to finish */
} rpc_server_options;

/* Creates a server (not listening yet). Copies opts. */
ch_status rpc_server_create(rpc_server **out, const rpc_server_options *opts);

/* Registers a method. Only before rpc_server_start (CH_FAILED_PRECONDITION
 * after). The service name (path up to the second '/') is recorded for
 * rpc_server_services, which reflection lists. */
ch_status rpc_server_add_method(rpc_server *s, const rpc_method *m);

/* One handler of a service, by method name as in the .proto. */
typedef struct rpc_handler {
    const char *method;   /* "CreateOrder" */
    rpc_kind kind;        /* protobuf-c does not record streaming: say it here */
    rpc_unary_fn unary;   /* for RPC_UNARY */
    rpc_stream_fn stream; /* for the streaming kinds */
} rpc_handler;

/* Registers every method of a protobuf-c service descriptor, taking the
 * paths and message types from it; handlers[] (n entries) names one handler
 * per method. CH_INVALID_ARGUMENT (and a log line naming it) when a method of
 * the service has no handler or a handler names no method, so a service
 * cannot leave part of its .proto unserved. Only before rpc_server_start. */
ch_status rpc_server_add_service(rpc_server *s, const ProtobufCServiceDescriptor *service,
                                 const rpc_handler *handlers, size_t n, void *ctx);

/* Names of the services registered so far ("choreo.orders.v1.Orders", ...),
 * in registration order, each once. The array belongs to the server. */
const char *const *rpc_server_services(const rpc_server *s, size_t *count);

/* Binds and starts the workers. CH_UNAVAILABLE when the address cannot be
 * bound (busy port). */
ch_status rpc_server_start(rpc_server *s);

/* The port actually bound (useful with port 0). */
int rpc_server_port(const rpc_server *s);

/* Blocks SIGTERM, SIGINT and SIGPIPE in the calling thread (and so in every
 * thread it creates afterwards). Call first thing in main, before grpc_init,
 * NATS or any thread. */
void rpc_block_signals(void);

/* Waits (sigwait) for SIGTERM or SIGINT, then shuts down gracefully. Returns
 * the signal number. Call from main after start; signals must be blocked. */
int rpc_server_run(rpc_server *s);

/* Graceful shutdown, from any thread except a handler; idempotent. Returns
 * when every call has ended and the workers are joined. */
void rpc_server_shutdown(rpc_server *s);

/* True once shutdown has begun. */
bool rpc_server_stopping(const rpc_server *s);

/* Frees the server (shutting it down first if needed). Accepts NULL. */
void rpc_server_destroy(rpc_server *s);

/* ---- unary calls ---- */

/* Replies OK with resp (serialized now; stays the caller's). Any thread. */
void rpc_call_reply(rpc_call *call, const ProtobufCMessage *resp);

/* Replies with an error status and a printf-style message that names what is
 * wrong (sent as grpc-message, at most 512 bytes). st must not be CH_OK. */
void rpc_call_fail(rpc_call *call, ch_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* A reply decided now and sent later: the service's writer decides a call
 * (reading the state as it is at its place among the decisions) and sends
 * the answer only once everything before it is stored. prepare serializes
 * resp at once (it may change or go after this returns); a later prepare
 * replaces an earlier one; send sends the latest, once, as reply or fail
 * would. A prepared reply never sent is freed with the call. Any thread,
 * one at a time per call. */
void rpc_call_prepare_reply(rpc_call *call, const ProtobufCMessage *resp);
void rpc_call_prepare_fail(rpc_call *call, ch_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void rpc_call_send_prepared(rpc_call *call);

/* How many of items[0..n), the elements of one repeated message field
 * numbered 1..15, fit in the reply to call next to `rest` (the reply without
 * them and without its page token) and a page token of up to token_max
 * bytes. At least 1 when n > 0: a single element over the cap fails when
 * sent, with RESOURCE_EXHAUSTED. List handlers send that many and page on
 * from there, so that no page is too big to send. */
size_t rpc_call_fit_items(const rpc_call *call, const ProtobufCMessage *rest, size_t token_max,
                          ProtobufCMessage *const *items, size_t n);

/* Value of request metadata `key` (lowercase), or NULL. *len gets its length
 * (len may be NULL); the value is also NUL-terminated. Valid until the call is
 * finished. Handler thread only. */
const char *rpc_call_metadata(const rpc_call *call, const char *key, size_t *len);

/* Adds response initial metadata; only before reply/fail; copied. */
void rpc_call_add_metadata(rpc_call *call, const char *key, const char *value);

/* Milliseconds left before the client's deadline (INT64_MAX when none). */
int64_t rpc_call_remaining_ms(const rpc_call *call);

/* The method path of the call, e.g. "/choreo.orders.v1.Orders/GetOrder". */
const char *rpc_call_method(const rpc_call *call);

/* ---- streaming calls (stream thread only) ---- */

/* Sends one message. CH_CANCELLED when the client is gone or the server
 * stops; the handler should then return. */
ch_status rpc_stream_send(rpc_stream *st, const ProtobufCMessage *msg);

/* Receives one request (bidi). *out is NULL at the client's half-close. Free
 * *out with protobuf_c_message_free_unpacked. CH_TIMEOUT after timeout_ms
 * (-1: wait forever), CH_CANCELLED when the call ended, CH_INVALID_ARGUMENT
 * when the bytes do not parse. */
ch_status rpc_stream_recv(rpc_stream *st, ProtobufCMessage **out, int timeout_ms);

/* Waits up to timeout_ms for the call to end (client cancel, deadline, server
 * stop); true if it has. Lets a watch loop poll for changes. */
bool rpc_stream_wait_cancelled(rpc_stream *st, int timeout_ms);

/* Message sent with the status the handler returns. */
void rpc_stream_set_error(rpc_stream *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *rpc_stream_metadata(const rpc_stream *st, const char *key, size_t *len);

#endif
