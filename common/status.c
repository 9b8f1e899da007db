/* status.c: names of ch_status and its one mapping to gRPC status codes. */
#include "status.h"

#include <grpc/status.h>

static const struct {
    const char *name;
    grpc_status_code grpc;
} status_table[CH_STATUS_COUNT_] = {
    [CH_OK] = {"OK", GRPC_STATUS_OK},
    [CH_INVALID_ARGUMENT] = {"INVALID_ARGUMENT", GRPC_STATUS_INVALID_ARGUMENT},
    [CH_NOT_FOUND] = {"NOT_FOUND", GRPC_STATUS_NOT_FOUND},
    [CH_ALREADY_EXISTS] = {"ALREADY_EXISTS", GRPC_STATUS_ALREADY_EXISTS},
    [CH_FAILED_PRECONDITION] = {"FAILED_PRECONDITION", GRPC_STATUS_FAILED_PRECONDITION},
    [CH_RESOURCE_EXHAUSTED] = {"RESOURCE_EXHAUSTED", GRPC_STATUS_RESOURCE_EXHAUSTED},
    [CH_UNAVAILABLE] = {"UNAVAILABLE", GRPC_STATUS_UNAVAILABLE},
    [CH_TIMEOUT] = {"TIMEOUT", GRPC_STATUS_DEADLINE_EXCEEDED},
    [CH_CANCELLED] = {"CANCELLED", GRPC_STATUS_CANCELLED},
    [CH_CONFLICT] = {"CONFLICT", GRPC_STATUS_ABORTED},
    [CH_NO_MEMORY] = {"NO_MEMORY", GRPC_STATUS_RESOURCE_EXHAUSTED},
    [CH_UNIMPLEMENTED] = {"UNIMPLEMENTED", GRPC_STATUS_UNIMPLEMENTED},
    [CH_INTERNAL] = {"INTERNAL", GRPC_STATUS_INTERNAL},
};

const char *ch_status_str(ch_status s)
{
    if ((unsigned)s >= CH_STATUS_COUNT_)
        return "UNKNOWN_STATUS";
    return status_table[s].name;
}

int ch_status_to_grpc(ch_status s)
{
    if ((unsigned)s >= CH_STATUS_COUNT_)
        return GRPC_STATUS_UNKNOWN;
    return status_table[s].grpc;
}

ch_status ch_status_from_grpc(int code)
{
    switch (code) {
    case GRPC_STATUS_OK: return CH_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_OUT_OF_RANGE: return CH_INVALID_ARGUMENT;
    case GRPC_STATUS_NOT_FOUND: return CH_NOT_FOUND;
    case GRPC_STATUS_ALREADY_EXISTS: return CH_ALREADY_EXISTS;
    case GRPC_STATUS_FAILED_PRECONDITION: return CH_FAILED_PRECONDITION;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return CH_RESOURCE_EXHAUSTED;
    case GRPC_STATUS_UNAVAILABLE: return CH_UNAVAILABLE;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return CH_TIMEOUT;
    case GRPC_STATUS_CANCELLED: return CH_CANCELLED;
    case GRPC_STATUS_ABORTED: return CH_CONFLICT;
    case GRPC_STATUS_UNIMPLEMENTED: return CH_UNIMPLEMENTED;
    default: return CH_INTERNAL;
    }
}
