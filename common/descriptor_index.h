/* descriptor_index.h: an index over a serialized FileDescriptorSet, for
 * server reflection.
 *
 * The set (protoc --descriptor_set_out --include_imports) is walked with a
 * small protobuf wire-format reader, so no code is generated for
 * descriptor.proto. The index splits the set into per-file
 * FileDescriptorProto bytes and records each file's name, its dependencies
 * and the fully qualified names it declares: messages and nested messages,
 * enums and their values (scoped as protobuf scopes them: "pkg.Msg.VALUE"),
 * fields, oneofs, services, methods ("pkg.Service.Method") and extensions.
 *
 * Ownership: the index does not copy the set; the bytes passed to
 * desc_index_create must outlive the index (the embedded set is static).
 * Everything else the index returns belongs to the index. After creation the
 * index is read-only, so any number of threads may query it at once. */
#ifndef CHOREO_DESCRIPTOR_INDEX_H
#define CHOREO_DESCRIPTOR_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define DESC_MAX_FILES 1024 /* files in one set */
#define DESC_MAX_NAME  512  /* longest file or symbol name, in bytes */
#define DESC_MAX_DEPTH 32   /* message nesting */

typedef struct desc_index desc_index;

typedef enum desc_kind {
    DESC_MESSAGE = 0,
    DESC_ENUM,
    DESC_ENUM_VALUE,
    DESC_FIELD,
    DESC_ONEOF,
    DESC_SERVICE,
    DESC_METHOD,
    DESC_EXTENSION,
} desc_kind;

/* Parses and indexes the FileDescriptorSet fds[0..len). CH_INVALID_ARGUMENT
 * (reason logged) when the bytes are malformed, hold no file, name a file or
 * symbol twice, or name a dependency the set does not contain; CH_NO_MEMORY
 * when allocation fails. fds is borrowed (see the header comment). */
ch_status desc_index_create(desc_index **out, const unsigned char *fds, size_t len);

/* Frees the index. Accepts NULL. */
void desc_index_destroy(desc_index *ix);

/* Number of files, in set order; file numbers are 0..count-1. */
size_t desc_index_file_count(const desc_index *ix);

/* Name of file number `file` ("choreo/orders/v1/orders.proto"). */
const char *desc_index_file_name(const desc_index *ix, size_t file);

/* The serialized FileDescriptorProto of file number `file` (points into the
 * set given to desc_index_create). */
const unsigned char *desc_index_file_bytes(const desc_index *ix, size_t file, size_t *len);

/* Finds a file by name. CH_NOT_FOUND when the set has no such file. */
ch_status desc_index_find_file(const desc_index *ix, const char *name, size_t *file);

/* Finds the file that declares a fully qualified symbol (no leading dot).
 * kind may be NULL. CH_NOT_FOUND when no file declares it. */
ch_status desc_index_find_symbol(const desc_index *ix, const char *symbol, size_t *file, desc_kind *kind);

/* Finds the file declaring the extension `number` of message type `extendee`
 * (fully qualified, no leading dot). CH_NOT_FOUND when there is none. */
ch_status desc_index_find_extension(const desc_index *ix, const char *extendee, int32_t number, size_t *file);

/* Writes up to cap extension numbers declared for message type `extendee`
 * into out and returns how many there are in all. */
size_t desc_index_extension_numbers(const desc_index *ix, const char *extendee, int32_t *out, size_t cap);

/* Writes the file numbers of `file` and all its transitive dependencies into
 * out, each once, `file` first, and returns how many there are. out needs
 * room for desc_index_file_count() entries; cap is its size. */
size_t desc_index_closure(const desc_index *ix, size_t file, size_t *out, size_t cap);

#endif
