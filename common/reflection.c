/* reflection.c: the ServerReflectionInfo bidi handler over descriptor_index. */
#include "reflection.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "descriptor_index.h"
#include "log.h"
#include "utf8.h"

#define REFLECTION_V1_PATH      "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define REFLECTION_V1ALPHA_PATH "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#define REFLECTION_MAX_EXT_NUMS 4096 /* extension numbers in one answer */

struct reflection {
    desc_index *ix;
    rpc_server *server; /* set by reflection_register */
};

/* One response and every part it points to, freed in one go. resp comes
 * first so that a response pointer is also the reply pointer. */
typedef struct reply {
    Grpc__Reflection__V1__ServerReflectionResponse resp;
    Grpc__Reflection__V1__FileDescriptorResponse files;
    Grpc__Reflection__V1__ExtensionNumberResponse numbers;
    Grpc__Reflection__V1__ListServiceResponse list;
    Grpc__Reflection__V1__ErrorResponse error;
    ProtobufCBinaryData *blobs;
    size_t *closure;
    Grpc__Reflection__V1__ServiceResponse *svc;
    Grpc__Reflection__V1__ServiceResponse **svcp;
    int32_t *nums;
    char message[REFLECTION_MAX_NAME + 64];
} reply;

ch_status reflection_create(reflection **out, const unsigned char *fds, size_t len)
{
    reflection *r;
    ch_status st;

    *out = NULL;
    r = calloc(1, sizeof(*r));
    if (!r)
        return CH_NO_MEMORY;
    st = desc_index_create(&r->ix, fds, len);
    if (st != CH_OK) {
        free(r);
        return st;
    }
    *out = r;
    return CH_OK;
}

void reflection_destroy(reflection *r)
{
    if (!r)
        return;
    desc_index_destroy(r->ix);
    free(r);
}

void reflection__response_free(Grpc__Reflection__V1__ServerReflectionResponse *resp)
{
    reply *rp = (reply *)resp;

    if (!rp)
        return;
    free(rp->blobs);
    free(rp->closure);
    free(rp->svc);
    free(rp->svcp);
    free(rp->nums);
    free(rp);
}

static void set_error(reply *rp, ch_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void set_error(reply *rp, ch_status st, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(rp->message, sizeof(rp->message), fmt, ap);
    va_end(ap);
    grpc__reflection__v1__error_response__init(&rp->error);
    rp->error.error_code = ch_status_to_grpc(st);
    rp->error.error_message = rp->message;
    rp->resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
    rp->resp.error_response = &rp->error;
}

/* A file and its transitive dependencies, the file first. */
static ch_status answer_files(const reflection *r, reply *rp, size_t file)
{
    size_t cap = desc_index_file_count(r->ix), n;

    rp->closure = calloc(cap, sizeof(*rp->closure));
    rp->blobs = calloc(cap, sizeof(*rp->blobs));
    if (!rp->closure || !rp->blobs)
        return CH_NO_MEMORY;
    n = desc_index_closure(r->ix, file, rp->closure, cap);
    for (size_t i = 0; i < n; i++) {
        /* protobuf-c only reads these bytes while serializing. */
        rp->blobs[i].data = (uint8_t *)desc_index_file_bytes(r->ix, rp->closure[i], &rp->blobs[i].len);
    }
    grpc__reflection__v1__file_descriptor_response__init(&rp->files);
    rp->files.n_file_descriptor_proto = n;
    rp->files.file_descriptor_proto = rp->blobs;
    rp->resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
    rp->resp.file_descriptor_response = &rp->files;
    return CH_OK;
}

static ch_status answer_list(reply *rp, const char *const *services, size_t n)
{
    if (n) {
        rp->svc = calloc(n, sizeof(*rp->svc));
        rp->svcp = calloc(n, sizeof(*rp->svcp));
        if (!rp->svc || !rp->svcp)
            return CH_NO_MEMORY;
    }
    for (size_t i = 0; i < n; i++) {
        grpc__reflection__v1__service_response__init(&rp->svc[i]);
        rp->svc[i].name = (char *)services[i];
        rp->svcp[i] = &rp->svc[i];
    }
    grpc__reflection__v1__list_service_response__init(&rp->list);
    rp->list.n_service = n;
    rp->list.service = rp->svcp;
    rp->resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
    rp->resp.list_services_response = &rp->list;
    return CH_OK;
}

static ch_status answer_numbers(const reflection *r, reply *rp, const char *type)
{
    size_t file, n;
    desc_kind kind;

    if (desc_index_find_symbol(r->ix, type, &file, &kind) != CH_OK || kind != DESC_MESSAGE) {
        set_error(rp, CH_NOT_FOUND, "message type not found: %s", type);
        return CH_OK;
    }
    n = desc_index_extension_numbers(r->ix, type, NULL, 0);
    if (n > REFLECTION_MAX_EXT_NUMS)
        n = REFLECTION_MAX_EXT_NUMS;
    if (n) {
        rp->nums = calloc(n, sizeof(*rp->nums));
        if (!rp->nums)
            return CH_NO_MEMORY;
        desc_index_extension_numbers(r->ix, type, rp->nums, n);
    }
    grpc__reflection__v1__extension_number_response__init(&rp->numbers);
    rp->numbers.base_type_name = (char *)type;
    rp->numbers.n_extension_number = n;
    rp->numbers.extension_number = rp->nums;
    rp->resp.message_response_case =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
    rp->resp.all_extension_numbers_response = &rp->numbers;
    return CH_OK;
}

/* A string from the request is usable when it is short and UTF-8. */
static bool name_ok(const char *s)
{
    size_t len;

    if (!s)
        return true;
    len = strnlen(s, REFLECTION_MAX_NAME + 1);
    return len <= REFLECTION_MAX_NAME && utf8_valid(s, len);
}

static bool request_ok(const Grpc__Reflection__V1__ServerReflectionRequest *req)
{
    if (!name_ok(req->host))
        return false;
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        return name_ok(req->file_by_filename);
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        return name_ok(req->file_containing_symbol);
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        return !req->file_containing_extension || name_ok(req->file_containing_extension->containing_type);
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        return name_ok(req->all_extension_numbers_of_type);
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        return name_ok(req->list_services);
    default: return true;
    }
}

ch_status reflection__answer(const reflection *r, const char *const *services, size_t nservices,
                             const Grpc__Reflection__V1__ServerReflectionRequest *req,
                             Grpc__Reflection__V1__ServerReflectionResponse **out)
{
    reply *rp;
    size_t file;
    ch_status st = CH_OK;
    const char *name;

    *out = NULL;
    rp = calloc(1, sizeof(*rp));
    if (!rp)
        return CH_NO_MEMORY;
    grpc__reflection__v1__server_reflection_response__init(&rp->resp);

    if (!request_ok(req)) {
        /* Echoing bad UTF-8 would break the client's decoder: answer bare. */
        set_error(rp, CH_INVALID_ARGUMENT, "request strings must be UTF-8 of at most %d bytes",
                  REFLECTION_MAX_NAME);
        goto cleanup;
    }
    rp->resp.valid_host = req->host ? req->host : (char *)"";
    rp->resp.original_request = (Grpc__Reflection__V1__ServerReflectionRequest *)req;

    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        st = answer_list(rp, services, nservices);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        name = req->file_by_filename ? req->file_by_filename : "";
        if (desc_index_find_file(r->ix, name, &file) == CH_OK)
            st = answer_files(r, rp, file);
        else
            set_error(rp, CH_NOT_FOUND, "file not found: %s", name);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        name = req->file_containing_symbol ? req->file_containing_symbol : "";
        if (desc_index_find_symbol(r->ix, name, &file, NULL) == CH_OK)
            st = answer_files(r, rp, file);
        else
            set_error(rp, CH_NOT_FOUND, "symbol not found: %s", name);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION: {
        const Grpc__Reflection__V1__ExtensionRequest *er = req->file_containing_extension;
        name = er && er->containing_type ? er->containing_type : "";
        if (er && desc_index_find_extension(r->ix, name, er->extension_number, &file) == CH_OK)
            st = answer_files(r, rp, file);
        else
            set_error(rp, CH_NOT_FOUND, "extension not found for type: %s", name);
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        name = req->all_extension_numbers_of_type ? req->all_extension_numbers_of_type : "";
        st = answer_numbers(r, rp, name);
        break;
    default:
        set_error(rp, CH_UNIMPLEMENTED, "request kind %d not implemented", (int)req->message_request_case);
        break;
    }

cleanup:
    if (st != CH_OK) {
        reflection__response_free(&rp->resp);
        return st;
    }
    *out = &rp->resp;
    return CH_OK;
}

/* The bidi handler: one response per request until the client half-closes
 * or the call ends. */
static ch_status reflection_stream(rpc_stream *st, const ProtobufCMessage *unused, void *ctx)
{
    const reflection *r = ctx;
    size_t nservices = 0;
    const char *const *services = rpc_server_services(r->server, &nservices);

    for (;;) {
        ProtobufCMessage *msg = NULL;
        Grpc__Reflection__V1__ServerReflectionResponse *resp = NULL;
        ch_status rc = rpc_stream_recv(st, &msg, -1);

        if (rc != CH_OK)
            return rc; /* CH_INVALID_ARGUMENT carries the runtime's message */
        if (!msg)
            return CH_OK; /* half-close: the client is done */
        rc = reflection__answer(r, services, nservices,
                                (const Grpc__Reflection__V1__ServerReflectionRequest *)msg, &resp);
        if (rc == CH_OK)
            rc = rpc_stream_send(st, &resp->base);
        else
            rpc_stream_set_error(st, "out of memory building the reflection response");
        reflection__response_free(resp);
        protobuf_c_message_free_unpacked(msg, NULL);
        if (rc != CH_OK)
            return rc;
    }
}

ch_status reflection_register(reflection *r, rpc_server *s)
{
    static const char *const paths[] = {REFLECTION_V1_PATH, REFLECTION_V1ALPHA_PATH};
    ch_status st;

    if (r->server && r->server != s)
        return CH_FAILED_PRECONDITION;
    r->server = s;
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        rpc_method m = {
            .path = paths[i],
            .kind = RPC_BIDI_STREAM,
            .request = &grpc__reflection__v1__server_reflection_request__descriptor,
            .response = &grpc__reflection__v1__server_reflection_response__descriptor,
            .stream = reflection_stream,
            .ctx = r,
        };
        if ((st = rpc_server_add_method(s, &m)) != CH_OK) {
            log_error("reflection: cannot register method", "path", paths[i], "status", ch_status_str(st),
                      NULL);
            return st;
        }
    }
    return CH_OK;
}
