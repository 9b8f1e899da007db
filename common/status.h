/* status.h: the one status enum of the project.
 *
 * Nearly every choreo function returns a ch_status. Library codes (natsStatus,
 * grpc_status_code, errno) are converted at the adapter that calls the library,
 * once, and the library's own message goes to the log line. CH_OK is 0 so that
 * `if (s != CH_OK)` and `if (s)` read the same. */
#ifndef CHOREO_STATUS_H
#define CHOREO_STATUS_H

typedef enum ch_status {
    CH_OK = 0,
    CH_INVALID_ARGUMENT,    /* the caller sent something malformed or out of range */
    CH_NOT_FOUND,           /* the named thing does not exist */
    CH_ALREADY_EXISTS,      /* create of something that exists */
    CH_FAILED_PRECONDITION, /* valid request, wrong state (e.g. cancel a running saga) */
    CH_RESOURCE_EXHAUSTED,  /* a cap was hit: size, count, queue */
    CH_UNAVAILABLE,         /* a dependency (NATS) is down; retry later */
    CH_TIMEOUT,             /* a deadline passed */
    CH_CANCELLED,           /* the caller went away or the process is stopping */
    CH_CONFLICT,            /* optimistic concurrency lost (compare-and-set) */
    CH_NO_MEMORY,           /* allocation failed */
    CH_UNIMPLEMENTED,       /* no such method or feature */
    CH_INTERNAL,            /* a bug or an unexpected library failure */
    CH_STATUS_COUNT_
} ch_status;

/* A short constant name for s, e.g. "INVALID_ARGUMENT". Never NULL. */
const char *ch_status_str(ch_status s);

/* The gRPC status code (grpc_status_code value) that s maps to. Kept as int so
 * this header needs no gRPC include; the mapping is the one place it lives. */
int ch_status_to_grpc(ch_status s);

/* The ch_status for a gRPC status code, for clients. */
ch_status ch_status_from_grpc(int grpc_code);

#endif
