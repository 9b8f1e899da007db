/* test_reflection.c: the descriptor index on the embedded FileDescriptorSet
 * and on a hand-encoded set with imports, nesting and extensions; the
 * response builder; then a bidi exchange with a real rpc_server through the
 * gRPC C core client API. */
#include <CUnit/Basic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "cu_run.h"
#include "descriptor_index.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "log.h"
#include "reflection.h"
#include "rpc_server.h"

extern const unsigned char choreo_descriptor_set[];
extern const unsigned long choreo_descriptor_set_len;

typedef Grpc__Reflection__V1__ServerReflectionRequest refl_req;
typedef Grpc__Reflection__V1__ServerReflectionResponse refl_resp;

/* protobuf-c string fields are char *; the literals are only read. */
#define TXT(lit) ((char *)(lit))
#define REQ_INIT GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT
#define CASE(x)  GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##x
#define RCASE(x) GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##x

/* ---- a tiny protobuf encoder for hand-made descriptor sets ---- */

typedef struct pbuf {
    unsigned char d[2048];
    size_t n;
} pbuf;

static void put_varint(pbuf *b, uint64_t v)
{
    do {
        unsigned char c = v & 0x7f;
        v >>= 7;
        b->d[b->n++] = c | (v ? 0x80 : 0);
    } while (v);
}

static void put_bytes(pbuf *b, uint32_t field, const void *p, size_t len)
{
    put_varint(b, (uint64_t)field << 3 | 2);
    put_varint(b, len);
    memcpy(b->d + b->n, p, len);
    b->n += len;
}

static void put_str(pbuf *b, uint32_t field, const char *s)
{
    put_bytes(b, field, s, strlen(s));
}

static void put_msg(pbuf *b, uint32_t field, const pbuf *m)
{
    put_bytes(b, field, m->d, m->n);
}

static void put_uint(pbuf *b, uint32_t field, uint64_t v)
{
    put_varint(b, (uint64_t)field << 3);
    put_varint(b, v);
}

/* A descriptor holding just a name (field 1). */
static pbuf named(const char *name)
{
    pbuf b = {.n = 0};
    put_str(&b, 1, name);
    return b;
}

/* Three files: a.proto (package p.a) imports b.proto and c.proto; b.proto
 * (package p) imports c.proto and declares p.B with nested p.B.Inner and
 * enum p.B.Inner.Color, plus extension 100 of p.C; c.proto declares p.C. */
static pbuf synthetic_set(void)
{
    pbuf set = {.n = 0}, a = {.n = 0}, b = {.n = 0}, c = {.n = 0};
    pbuf msg, inner, color, red, svc, ext, field, val;

    put_str(&c, 1, "c.proto");
    put_str(&c, 2, "p");
    msg = named("C");
    field = named("x");
    put_msg(&msg, 2, &field);
    put_msg(&c, 4, &msg);

    put_str(&b, 1, "b.proto");
    put_str(&b, 2, "p");
    put_str(&b, 3, "c.proto");
    msg = named("B");
    inner = named("Inner");
    color = named("Color");
    red = named("RED");
    put_msg(&color, 2, &red);
    put_msg(&inner, 4, &color);
    put_msg(&msg, 3, &inner);
    put_msg(&b, 4, &msg);
    ext = named("ext_b");
    put_str(&ext, 2, ".p.C");
    put_uint(&ext, 3, 100);
    put_msg(&b, 7, &ext);

    put_str(&a, 1, "a.proto");
    put_str(&a, 2, "p.a");
    put_str(&a, 3, "b.proto");
    put_str(&a, 3, "c.proto");
    svc = named("S");
    val = named("M");
    put_msg(&svc, 2, &val);
    put_msg(&a, 6, &svc);
    msg = named("A");
    val = named("choice");
    put_msg(&msg, 8, &val);
    put_msg(&a, 4, &msg);

    put_msg(&set, 1, &a);
    put_msg(&set, 1, &b);
    put_msg(&set, 1, &c);
    return set;
}

/* Number of FileDescriptorProto entries in the embedded set, counted
 * independently of the index: top-level tags 0x0a with their lengths. */
static size_t count_top_level_files(const unsigned char *p, size_t len)
{
    size_t i = 0, n = 0;

    while (i < len) {
        uint64_t l = 0;
        int shift = 0;
        if (p[i++] != 0x0a)
            return 0;
        while (p[i] & 0x80)
            l |= (uint64_t)(p[i++] & 0x7f) << shift, shift += 7;
        l |= (uint64_t)p[i++] << shift;
        i += l;
        n++;
    }
    return n;
}

/* ---- the index on the embedded set ---- */

static void test_reflection_index_splits_embedded_set(void)
{
    desc_index *ix = NULL;
    size_t file = 99, len = 0, total = 0;

    CU_ASSERT_EQUAL_FATAL(desc_index_create(&ix, choreo_descriptor_set, choreo_descriptor_set_len), CH_OK);
    CU_ASSERT_EQUAL(desc_index_file_count(ix),
                    count_top_level_files(choreo_descriptor_set, choreo_descriptor_set_len));
    CU_ASSERT_EQUAL(desc_index_file_count(ix), 7);
    for (size_t i = 0; i < desc_index_file_count(ix); i++) {
        CU_ASSERT_PTR_NOT_NULL(desc_index_file_bytes(ix, i, &len));
        total += len;
    }
    CU_ASSERT_TRUE(total < choreo_descriptor_set_len && total > choreo_descriptor_set_len / 2);

    CU_ASSERT_EQUAL(desc_index_find_file(ix, "choreo/orders/v1/orders.proto", &file), CH_OK);
    CU_ASSERT_STRING_EQUAL(desc_index_file_name(ix, file), "choreo/orders/v1/orders.proto");
    CU_ASSERT_EQUAL(desc_index_find_file(ix, "choreo/orders/v1/nope.proto", &file), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(desc_index_find_file(ix, "", &file), CH_NOT_FOUND);
    desc_index_destroy(ix);
}

static void test_reflection_index_finds_symbols(void)
{
    desc_index *ix = NULL;
    size_t orders = 0, health = 0, file = 99;
    desc_kind kind = DESC_FIELD;

    CU_ASSERT_EQUAL_FATAL(desc_index_create(&ix, choreo_descriptor_set, choreo_descriptor_set_len), CH_OK);
    CU_ASSERT_EQUAL_FATAL(desc_index_find_file(ix, "choreo/orders/v1/orders.proto", &orders), CH_OK);
    CU_ASSERT_EQUAL_FATAL(desc_index_find_file(ix, "grpc/health/v1/health.proto", &health), CH_OK);

    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders.v1.Orders", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(file, orders);
    CU_ASSERT_EQUAL(kind, DESC_SERVICE);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders.v1.Orders.CreateOrder", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(file, orders);
    CU_ASSERT_EQUAL(kind, DESC_METHOD);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders.v1.LineItem", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_MESSAGE);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders.v1.LineItem.sku", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_FIELD);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders.v1.OrderStatus", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_ENUM);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders.v1.ORDER_STATUS_CONFIRMED", &file, &kind),
                    CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_ENUM_VALUE);
    CU_ASSERT_EQUAL(file, orders);

    /* A nested enum and its value (scoped beside the enum). */
    CU_ASSERT_EQUAL(
        desc_index_find_symbol(ix, "grpc.health.v1.HealthCheckResponse.ServingStatus", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(file, health);
    CU_ASSERT_EQUAL(kind, DESC_ENUM);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "grpc.health.v1.HealthCheckResponse.SERVING", &file, &kind),
                    CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_ENUM_VALUE);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "grpc.health.v1.Health.Watch", &file, NULL), CH_OK);
    CU_ASSERT_EQUAL(file, health);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "grpc.reflection.v1alpha.ServerReflection", &file, NULL),
                    CH_OK);
    CU_ASSERT_STRING_EQUAL(desc_index_file_name(ix, file), "grpc/reflection/v1alpha/reflection.proto");

    /* Unknown, partial, or dotted the way protoc writes type references. */
    file = 99;
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders.v1.Nope", &file, NULL), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "choreo.orders", &file, NULL), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, ".choreo.orders.v1.Orders", &file, NULL), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "", &file, NULL), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(file, 99);
    desc_index_destroy(ix);
}

static void test_reflection_index_closure_without_imports(void)
{
    desc_index *ix = NULL;
    size_t file = 0, out[16];

    CU_ASSERT_EQUAL_FATAL(desc_index_create(&ix, choreo_descriptor_set, choreo_descriptor_set_len), CH_OK);
    CU_ASSERT_EQUAL_FATAL(desc_index_find_file(ix, "grpc/reflection/v1/reflection.proto", &file), CH_OK);
    CU_ASSERT_EQUAL(desc_index_closure(ix, file, out, 16), 1);
    CU_ASSERT_EQUAL(out[0], file);
    CU_ASSERT_EQUAL(desc_index_closure(ix, 1000, out, 16), 0);
    desc_index_destroy(ix);
}

/* ---- the index on a hand-made set ---- */

static void test_reflection_index_closure_with_imports(void)
{
    pbuf set = synthetic_set();
    desc_index *ix = NULL;
    size_t a = 9, b = 9, c = 9, out[8], n;

    CU_ASSERT_EQUAL_FATAL(desc_index_create(&ix, set.d, set.n), CH_OK);
    CU_ASSERT_EQUAL(desc_index_file_count(ix), 3);
    CU_ASSERT_EQUAL(desc_index_find_file(ix, "a.proto", &a), CH_OK);
    CU_ASSERT_EQUAL(desc_index_find_file(ix, "b.proto", &b), CH_OK);
    CU_ASSERT_EQUAL(desc_index_find_file(ix, "c.proto", &c), CH_OK);

    /* c.proto is reached twice (a -> c, a -> b -> c) and listed once. */
    n = desc_index_closure(ix, a, out, 8);
    CU_ASSERT_EQUAL_FATAL(n, 3);
    CU_ASSERT_EQUAL(out[0], a);
    CU_ASSERT_TRUE((out[1] == b && out[2] == c) || (out[1] == c && out[2] == b));
    n = desc_index_closure(ix, b, out, 8);
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_EQUAL(out[0], b);
    CU_ASSERT_EQUAL(out[1], c);
    CU_ASSERT_EQUAL(desc_index_closure(ix, c, out, 8), 1);
    desc_index_destroy(ix);
}

static void test_reflection_index_nested_and_extensions(void)
{
    pbuf set = synthetic_set();
    desc_index *ix = NULL;
    size_t file = 9, b = 9, c = 9;
    desc_kind kind = DESC_FIELD;
    int32_t nums[4] = {0};

    CU_ASSERT_EQUAL_FATAL(desc_index_create(&ix, set.d, set.n), CH_OK);
    CU_ASSERT_EQUAL(desc_index_find_file(ix, "b.proto", &b), CH_OK);
    CU_ASSERT_EQUAL(desc_index_find_file(ix, "c.proto", &c), CH_OK);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "p.B.Inner", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_MESSAGE);
    CU_ASSERT_EQUAL(file, b);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "p.B.Inner.Color", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_ENUM);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "p.B.Inner.RED", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_ENUM_VALUE);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "p.a.S.M", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_METHOD);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "p.a.A.choice", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_ONEOF);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "p.C.x", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_FIELD);
    CU_ASSERT_EQUAL(file, c);
    CU_ASSERT_EQUAL(desc_index_find_symbol(ix, "p.ext_b", &file, &kind), CH_OK);
    CU_ASSERT_EQUAL(kind, DESC_EXTENSION);

    CU_ASSERT_EQUAL(desc_index_find_extension(ix, "p.C", 100, &file), CH_OK);
    CU_ASSERT_EQUAL(file, b);
    CU_ASSERT_EQUAL(desc_index_find_extension(ix, "p.C", 101, &file), CH_NOT_FOUND);
    CU_ASSERT_EQUAL(desc_index_extension_numbers(ix, "p.C", nums, 4), 1);
    CU_ASSERT_EQUAL(nums[0], 100);
    CU_ASSERT_EQUAL(desc_index_extension_numbers(ix, "p.B", nums, 4), 0);
    desc_index_destroy(ix);
}

static void test_reflection_index_rejects_bad_sets(void)
{
    static const unsigned char ff[64] = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    };
    static const unsigned char huge_len[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 'a'};
    static const unsigned char group[] = {0x0b, 0x0c};
    static const unsigned char nameless[] = {0x0a, 0x02, 0x12, 0x00}; /* file with only a package */
    desc_index *ix = (desc_index *)&ix;
    pbuf set, dup = {.n = 0}, dangling = {.n = 0}, f;

    CU_ASSERT_EQUAL(desc_index_create(&ix, choreo_descriptor_set, choreo_descriptor_set_len - 7),
                    CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(ix);
    CU_ASSERT_EQUAL(desc_index_create(&ix, ff, sizeof(ff)), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(desc_index_create(&ix, huge_len, sizeof(huge_len)), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(desc_index_create(&ix, group, sizeof(group)), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(desc_index_create(&ix, nameless, sizeof(nameless)), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(desc_index_create(&ix, ff, 0), CH_INVALID_ARGUMENT);
    CU_ASSERT_EQUAL(desc_index_create(&ix, NULL, 0), CH_INVALID_ARGUMENT);

    /* The same file twice, and an import the set does not hold. */
    set = synthetic_set();
    memcpy(dup.d, set.d, set.n);
    memcpy(dup.d + set.n, set.d, set.n);
    dup.n = 2 * set.n;
    CU_ASSERT_EQUAL(desc_index_create(&ix, dup.d, dup.n), CH_INVALID_ARGUMENT);
    f = named("lonely.proto");
    put_str(&f, 3, "missing.proto");
    put_msg(&dangling, 1, &f);
    CU_ASSERT_EQUAL(desc_index_create(&ix, dangling.d, dangling.n), CH_INVALID_ARGUMENT);
    CU_ASSERT_PTR_NULL(ix);
}

/* Single-byte corruptions all over the embedded set: each either parses or
 * is rejected; none may crash or leak (run under ASan). */
static void test_reflection_index_survives_corruption(void)
{
    size_t len = choreo_descriptor_set_len, rejected = 0;
    unsigned char *copy = malloc(len);

    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    for (size_t pos = 0; pos < len; pos += 13) {
        desc_index *ix = NULL;
        memcpy(copy, choreo_descriptor_set, len);
        copy[pos] ^= (unsigned char)(0x5a + pos);
        if (desc_index_create(&ix, copy, len) != CH_OK)
            rejected++;
        else
            CU_ASSERT_TRUE(desc_index_file_count(ix) >= 1);
        desc_index_destroy(ix);
    }
    CU_ASSERT_TRUE(rejected > 0);
    free(copy);
}

/* ---- the response builder ---- */

static const char *const fake_services[] = {"choreo.orders.v1.Orders", "grpc.health.v1.Health"};

static refl_resp *answer(const reflection *r, const refl_req *req)
{
    refl_resp *resp = NULL;
    CU_ASSERT_EQUAL(reflection__answer(r, fake_services, 2, req, &resp), CH_OK);
    return resp;
}

static void test_reflection_answer_requests(void)
{
    reflection *r = NULL;
    refl_req req = REQ_INIT;
    refl_resp *resp;

    CU_ASSERT_EQUAL_FATAL(reflection_create(&r, choreo_descriptor_set, choreo_descriptor_set_len), CH_OK);

    req.host = TXT("localhost");
    req.message_request_case = CASE(LIST_SERVICES);
    req.list_services = TXT("*");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(LIST_SERVICES_RESPONSE));
    CU_ASSERT_EQUAL_FATAL(resp->list_services_response->n_service, 2);
    CU_ASSERT_STRING_EQUAL(resp->list_services_response->service[1]->name, "grpc.health.v1.Health");
    CU_ASSERT_STRING_EQUAL(resp->valid_host, "localhost");
    CU_ASSERT_PTR_EQUAL(resp->original_request, &req);
    reflection__response_free(resp);

    req.message_request_case = CASE(FILE_BY_FILENAME);
    req.file_by_filename = TXT("choreo/orders/v1/orders.proto");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(FILE_DESCRIPTOR_RESPONSE));
    CU_ASSERT_EQUAL(resp->file_descriptor_response->n_file_descriptor_proto, 1);
    reflection__response_free(resp);

    req.message_request_case = CASE(FILE_CONTAINING_SYMBOL);
    req.file_containing_symbol = TXT("grpc.health.v1.Health.Check");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(FILE_DESCRIPTOR_RESPONSE));
    CU_ASSERT_EQUAL(resp->file_descriptor_response->n_file_descriptor_proto, 1);
    reflection__response_free(resp);

    req.file_containing_symbol = TXT("grpc.health.v1.Nope");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    CU_ASSERT_EQUAL(resp->error_response->error_code, 5 /* NOT_FOUND */);
    CU_ASSERT_PTR_NOT_NULL(strstr(resp->error_response->error_message, "grpc.health.v1.Nope"));
    reflection__response_free(resp);

    req.message_request_case = CASE(FILE_BY_FILENAME);
    req.file_by_filename = TXT("nope.proto");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    CU_ASSERT_EQUAL(resp->error_response->error_code, 5);
    reflection__response_free(resp);

    req.message_request_case = CASE(_NOT_SET);
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    CU_ASSERT_EQUAL(resp->error_response->error_code, 12 /* UNIMPLEMENTED */);
    CU_ASSERT_PTR_EQUAL(resp->original_request, &req);
    reflection__response_free(resp);
    reflection_destroy(r);
}

static void test_reflection_answer_extensions(void)
{
    pbuf set = synthetic_set();
    reflection *r = NULL;
    refl_req req = REQ_INIT;
    Grpc__Reflection__V1__ExtensionRequest ext = GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    refl_resp *resp;

    CU_ASSERT_EQUAL_FATAL(reflection_create(&r, set.d, set.n), CH_OK);
    req.message_request_case = CASE(ALL_EXTENSION_NUMBERS_OF_TYPE);
    req.all_extension_numbers_of_type = TXT("p.C");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ALL_EXTENSION_NUMBERS_RESPONSE));
    CU_ASSERT_STRING_EQUAL(resp->all_extension_numbers_response->base_type_name, "p.C");
    CU_ASSERT_EQUAL_FATAL(resp->all_extension_numbers_response->n_extension_number, 1);
    CU_ASSERT_EQUAL(resp->all_extension_numbers_response->extension_number[0], 100);
    reflection__response_free(resp);

    req.all_extension_numbers_of_type = TXT("p.B"); /* a message with no extensions */
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ALL_EXTENSION_NUMBERS_RESPONSE));
    CU_ASSERT_EQUAL(resp->all_extension_numbers_response->n_extension_number, 0);
    reflection__response_free(resp);

    req.all_extension_numbers_of_type = TXT("p.Nope");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    CU_ASSERT_EQUAL(resp->error_response->error_code, 5);
    reflection__response_free(resp);

    req.message_request_case = CASE(FILE_CONTAINING_EXTENSION);
    req.file_containing_extension = &ext;
    ext.containing_type = TXT("p.C");
    ext.extension_number = 100;
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(FILE_DESCRIPTOR_RESPONSE));
    CU_ASSERT_EQUAL(resp->file_descriptor_response->n_file_descriptor_proto, 2); /* b.proto, c.proto */
    reflection__response_free(resp);

    ext.extension_number = 7;
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    CU_ASSERT_EQUAL(resp->error_response->error_code, 5);
    reflection__response_free(resp);

    req.file_containing_extension = NULL; /* malformed: the oneof set without its message */
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    reflection__response_free(resp);
    reflection_destroy(r);
}

static void test_reflection_answer_rejects_bad_strings(void)
{
    reflection *r = NULL;
    refl_req req = REQ_INIT;
    refl_resp *resp;
    char *longname = malloc(REFLECTION_MAX_NAME + 2);

    CU_ASSERT_PTR_NOT_NULL_FATAL(longname);
    memset(longname, 'x', REFLECTION_MAX_NAME + 1);
    longname[REFLECTION_MAX_NAME + 1] = 0;
    CU_ASSERT_EQUAL_FATAL(reflection_create(&r, choreo_descriptor_set, choreo_descriptor_set_len), CH_OK);

    req.message_request_case = CASE(FILE_CONTAINING_SYMBOL);
    req.file_containing_symbol = longname;
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    CU_ASSERT_EQUAL(resp->error_response->error_code, 3 /* INVALID_ARGUMENT */);
    CU_ASSERT_PTR_NULL(resp->original_request); /* not echoed */
    reflection__response_free(resp);

    req.file_containing_symbol = TXT("choreo.orders.v1.Orders");
    req.host = TXT("\xc0\xaf");
    resp = answer(r, &req);
    CU_ASSERT_FATAL(resp != NULL && resp->message_response_case == RCASE(ERROR_RESPONSE));
    CU_ASSERT_EQUAL(resp->error_response->error_code, 3);
    CU_ASSERT_STRING_EQUAL(resp->valid_host, "");
    reflection__response_free(resp);

    free(longname);
    reflection_destroy(r);
}

/* ---- end to end ---- */

typedef struct bidi {
    grpc_channel *channel;
    grpc_completion_queue *cq;
    grpc_call *call;
    bool got_initial;
    grpc_metadata_array initial;
} bidi;

static bool run_batch(bidi *b, const grpc_op *ops, size_t n)
{
    static int tag;
    grpc_event ev;

    if (grpc_call_start_batch(b->call, ops, n, &tag, NULL) != GRPC_CALL_OK)
        return false;
    ev = grpc_completion_queue_pluck(
        b->cq, &tag, gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_seconds(10, GPR_TIMESPAN)),
        NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

static bool bidi_open(bidi *b, int port, const char *method)
{
    char target[64];
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_slice m = grpc_slice_from_static_string(method);
    grpc_op op = {.op = GRPC_OP_SEND_INITIAL_METADATA};

    memset(b, 0, sizeof(*b));
    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    b->channel = grpc_channel_create(target, creds, NULL);
    grpc_channel_credentials_release(creds);
    b->cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_metadata_array_init(&b->initial);
    b->call = grpc_channel_create_call(
        b->channel, NULL, GRPC_PROPAGATE_DEFAULTS, b->cq, m, NULL,
        gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_seconds(20, GPR_TIMESPAN)), NULL);
    return b->call && run_batch(b, &op, 1);
}

/* Sends one request and waits for one response (caller frees it). */
static refl_resp *bidi_exchange(bidi *b, const refl_req *req)
{
    size_t len = protobuf_c_message_get_packed_size(&req->base);
    uint8_t *buf = malloc(len ? len : 1);
    grpc_byte_buffer *send, *recv = NULL;
    grpc_slice s;
    grpc_op ops[3];
    size_t n = 0;
    refl_resp *resp = NULL;

    protobuf_c_message_pack(&req->base, buf);
    s = grpc_slice_from_copied_buffer((const char *)buf, len);
    send = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    free(buf);
    memset(ops, 0, sizeof(ops));
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = send;
    if (!b->got_initial) {
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &b->initial;
        b->got_initial = true;
    }
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &recv;
    if (run_batch(b, ops, n) && recv) {
        grpc_byte_buffer_reader reader;
        grpc_slice all;
        if (grpc_byte_buffer_reader_init(&reader, recv)) {
            all = grpc_byte_buffer_reader_readall(&reader);
            resp = (refl_resp *)protobuf_c_message_unpack(
                &grpc__reflection__v1__server_reflection_response__descriptor, NULL, GRPC_SLICE_LENGTH(all),
                GRPC_SLICE_START_PTR(all));
            grpc_slice_unref(all);
            grpc_byte_buffer_reader_destroy(&reader);
        }
    }
    grpc_byte_buffer_destroy(send);
    if (recv)
        grpc_byte_buffer_destroy(recv);
    return resp;
}

/* Half-closes, returns the call's status code, frees everything. */
static int bidi_close(bidi *b)
{
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_metadata_array trailing;
    grpc_op ops[3];
    size_t n = 0;

    grpc_metadata_array_init(&trailing);
    memset(ops, 0, sizeof(ops));
    ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[n].data.recv_status_on_client.status = &code;
    ops[n++].data.recv_status_on_client.status_details = &details;
    if (!b->got_initial) { /* the core delivers the status only after the initial metadata */
        ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &b->initial;
    }
    if (!run_batch(b, ops, n))
        code = GRPC_STATUS_UNKNOWN;
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&trailing);
    grpc_metadata_array_destroy(&b->initial);
    grpc_call_unref(b->call);
    grpc_completion_queue_shutdown(b->cq);
    while (grpc_completion_queue_pluck(b->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(b->cq);
    grpc_channel_destroy(b->channel);
    return (int)code;
}

static void stub_unary(rpc_call *call, const ProtobufCMessage *req, void *ctx)
{
    rpc_call_fail(call, CH_UNIMPLEMENTED, "stub");
}

/* A server with two stub services and reflection, on an ephemeral port. */
static rpc_server *start_server(reflection *r)
{
    rpc_server_options opts = {.listen_addr = "127.0.0.1:0",
                               .workers = 1,
                               .max_message_bytes = 4 << 20,
                               .max_streams = 4,
                               .grace_ms = 500};
    static const char *const paths[] = {"/choreo.orders.v1.Orders/GetOrder", "/grpc.health.v1.Health/Check"};
    rpc_server *s = NULL;

    CU_ASSERT_EQUAL_FATAL(rpc_server_create(&s, &opts), CH_OK);
    for (size_t i = 0; i < 2; i++) {
        rpc_method m = {.path = paths[i],
                        .kind = RPC_UNARY,
                        .request = &grpc__reflection__v1__server_reflection_request__descriptor,
                        .response = &grpc__reflection__v1__server_reflection_response__descriptor,
                        .unary = stub_unary};
        CU_ASSERT_EQUAL(rpc_server_add_method(s, &m), CH_OK);
    }
    CU_ASSERT_EQUAL(reflection_register(r, s), CH_OK);
    CU_ASSERT_EQUAL_FATAL(rpc_server_start(s), CH_OK);
    CU_ASSERT_TRUE(rpc_server_port(s) > 0);
    return s;
}

static bool has_service(const refl_resp *resp, const char *name)
{
    for (size_t i = 0; i < resp->list_services_response->n_service; i++)
        if (strcmp(resp->list_services_response->service[i]->name, name) == 0)
            return true;
    return false;
}

/* Wraps one FileDescriptorProto in a set and indexes it: proves the bytes
 * parse and names the file. */
static bool blob_parses_as(const ProtobufCBinaryData *blob, const char *file_name)
{
    unsigned char *set = malloc(blob->len + 16);
    desc_index *ix = NULL;
    size_t n = 0, file;
    uint64_t v = blob->len;
    bool ok = false;

    if (!set)
        return false;
    set[n++] = 0x0a; /* field 1, length-delimited */
    do {
        set[n++] = (unsigned char)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    memcpy(set + n, blob->data, blob->len);
    if (desc_index_create(&ix, set, n + blob->len) == CH_OK)
        ok = desc_index_find_file(ix, file_name, &file) == CH_OK;
    desc_index_destroy(ix);
    free(set);
    return ok;
}

static void exchange_on(int port, const char *method)
{
    bidi b;
    refl_req req = REQ_INIT;
    refl_resp *resp;

    CU_ASSERT_TRUE_FATAL(bidi_open(&b, port, method));
    req.host = TXT("test-host");
    req.message_request_case = CASE(LIST_SERVICES);
    req.list_services = TXT("");
    resp = bidi_exchange(&b, &req);
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    CU_ASSERT_EQUAL_FATAL(resp->message_response_case, RCASE(LIST_SERVICES_RESPONSE));
    CU_ASSERT_TRUE(has_service(resp, "grpc.health.v1.Health"));
    CU_ASSERT_TRUE(has_service(resp, "choreo.orders.v1.Orders"));
    CU_ASSERT_TRUE(has_service(resp, "grpc.reflection.v1.ServerReflection"));
    CU_ASSERT_TRUE(has_service(resp, "grpc.reflection.v1alpha.ServerReflection"));
    CU_ASSERT_STRING_EQUAL(resp->valid_host, "test-host");
    CU_ASSERT_TRUE(resp->original_request &&
                   resp->original_request->message_request_case == CASE(LIST_SERVICES));
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    /* Several requests on the same stream. */
    req.message_request_case = CASE(FILE_CONTAINING_SYMBOL);
    req.file_containing_symbol = TXT("choreo.orders.v1.Orders.CreateOrder");
    resp = bidi_exchange(&b, &req);
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    CU_ASSERT_EQUAL_FATAL(resp->message_response_case, RCASE(FILE_DESCRIPTOR_RESPONSE));
    CU_ASSERT_EQUAL_FATAL(resp->file_descriptor_response->n_file_descriptor_proto, 1);
    CU_ASSERT_TRUE(blob_parses_as(&resp->file_descriptor_response->file_descriptor_proto[0],
                                  "choreo/orders/v1/orders.proto"));
    CU_ASSERT_STRING_EQUAL(resp->original_request->file_containing_symbol,
                           "choreo.orders.v1.Orders.CreateOrder");
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    req.file_containing_symbol = TXT("choreo.orders.v1.DoesNotExist");
    resp = bidi_exchange(&b, &req);
    CU_ASSERT_PTR_NOT_NULL_FATAL(resp);
    CU_ASSERT_EQUAL(resp->message_response_case, RCASE(ERROR_RESPONSE));
    if (resp->message_response_case == RCASE(ERROR_RESPONSE))
        CU_ASSERT_EQUAL(resp->error_response->error_code, GRPC_STATUS_NOT_FOUND);
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    CU_ASSERT_EQUAL(bidi_close(&b), GRPC_STATUS_OK);
}

static void test_reflection_end_to_end(void)
{
    reflection *r = NULL;
    rpc_server *s;

    CU_ASSERT_EQUAL_FATAL(reflection_create(&r, choreo_descriptor_set, choreo_descriptor_set_len), CH_OK);
    s = start_server(r);
    exchange_on(rpc_server_port(s), "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    exchange_on(rpc_server_port(s), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo");
    rpc_server_destroy(s);
    reflection_destroy(r);
}

/* Bytes that do not parse as a request end the stream with INVALID_ARGUMENT
 * and leave the server serving. */
static void test_reflection_end_to_end_garbage(void)
{
    static const char junk[] = "\xff\xff\xff\xff";
    reflection *r = NULL;
    rpc_server *s;
    bidi b;
    grpc_slice sl = grpc_slice_from_static_buffer(junk, 4);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
    grpc_op op = {.op = GRPC_OP_SEND_MESSAGE};

    CU_ASSERT_EQUAL_FATAL(reflection_create(&r, choreo_descriptor_set, choreo_descriptor_set_len), CH_OK);
    s = start_server(r);
    CU_ASSERT_TRUE_FATAL(
        bidi_open(&b, rpc_server_port(s), "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
    op.data.send_message.send_message = bb;
    run_batch(&b, &op, 1); /* may fail if the server already ended the call */
    grpc_byte_buffer_destroy(bb);
    CU_ASSERT_EQUAL(bidi_close(&b), GRPC_STATUS_INVALID_ARGUMENT);

    exchange_on(rpc_server_port(s), "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    rpc_server_destroy(s);
    reflection_destroy(r);
}

int main(void)
{
    static const cu_test tests[] = {
        {"index splits the embedded set", test_reflection_index_splits_embedded_set},
        {"index finds symbols", test_reflection_index_finds_symbols},
        {"closure without imports", test_reflection_index_closure_without_imports},
        {"closure with imports", test_reflection_index_closure_with_imports},
        {"nested types and extensions", test_reflection_index_nested_and_extensions},
        {"bad sets rejected", test_reflection_index_rejects_bad_sets},
        {"corruption survived", test_reflection_index_survives_corruption},
        {"answers requests", test_reflection_answer_requests},
        {"answers extension requests", test_reflection_answer_extensions},
        {"rejects bad strings", test_reflection_answer_rejects_bad_strings},
        {"end to end v1 and v1alpha", test_reflection_end_to_end},
        {"end to end garbage request", test_reflection_end_to_end_garbage},
        {NULL, NULL},
    };

    log_configure("test_reflection", LOG_ERROR, 2); /* rejected sets log warnings: keep them quiet */
    grpc_init();
    int rc = cu_run("reflection", NULL, NULL, tests);
    grpc_shutdown();
    return rc;
}
