/* reflection.h: gRPC server reflection (grpc.reflection.v1 and v1alpha) over
 * the rpc_server runtime, answered from an embedded FileDescriptorSet.
 *
 * Both versions share one wire format, so one bidi handler, decoding with the
 * v1 message types, serves /grpc.reflection.v1.ServerReflection/
 * ServerReflectionInfo and /grpc.reflection.v1alpha.ServerReflection/
 * ServerReflectionInfo. It answers list_services (from rpc_server_services),
 * file_by_filename and file_containing_symbol (the file plus its transitive
 * dependencies, each once, the requested file first), file_containing_extension
 * and all_extension_numbers_of_type; unknown names get a NOT_FOUND
 * error_response, a request with no known kind UNIMPLEMENTED, and strings that
 * are over REFLECTION_MAX_NAME bytes or not UTF-8 INVALID_ARGUMENT (the stream
 * stays open in every case). Each response echoes the request's host as
 * valid_host and the request as original_request.
 *
 * Ownership: the reflection object owns its index; the FileDescriptorSet
 * bytes are borrowed and must outlive it. It must outlive the server it is
 * registered on: destroy the server first. */
#ifndef CHOREO_REFLECTION_H
#define CHOREO_REFLECTION_H

#include <stddef.h>

#include "grpc/reflection/v1/reflection.pb-c.h"
#include "rpc_server.h"
#include "status.h"

#define REFLECTION_MAX_NAME 512 /* longest accepted symbol, file name or host */

typedef struct reflection reflection;

/* Indexes the FileDescriptorSet fds[0..len) (e.g. choreo_descriptor_set).
 * CH_INVALID_ARGUMENT when it does not parse, CH_NO_MEMORY. fds is borrowed.
 * Any thread, before the server starts. */
ch_status reflection_create(reflection **out, const unsigned char *fds, size_t len);

/* Frees r. Accepts NULL. Only once the server it was registered on is
 * destroyed. */
void reflection_destroy(reflection *r);

/* Registers both ServerReflectionInfo methods on s. Call after every other
 * service is registered, before rpc_server_start, on one server only
 * (CH_FAILED_PRECONDITION for a second one). */
ch_status reflection_register(reflection *r, rpc_server *s);

/* Builds the response to one request, as the stream handler does; exposed for
 * tests. services/nservices are what list_services answers. *out is freed
 * with reflection__response_free; it points into req (original_request,
 * valid_host) and into r, so both must outlive it. CH_NO_MEMORY only; every
 * other failure is an error_response. */
ch_status reflection__answer(const reflection *r, const char *const *services, size_t nservices,
                             const Grpc__Reflection__V1__ServerReflectionRequest *req,
                             Grpc__Reflection__V1__ServerReflectionResponse **out);

/* Frees a response made by reflection__answer. Accepts NULL. */
void reflection__response_free(Grpc__Reflection__V1__ServerReflectionResponse *resp);

#endif
