/* descriptor_index.c: FileDescriptorSet wire-format walker and symbol index.
 *
 * Field numbers used below come from google/protobuf/descriptor.proto:
 *   FileDescriptorSet:        1 file (FileDescriptorProto)
 *   FileDescriptorProto:      1 name, 2 package, 3 dependency, 4 message_type,
 *                             5 enum_type, 6 service, 7 extension
 *   DescriptorProto:          1 name, 2 field, 3 nested_type, 4 enum_type,
 *                             6 extension, 8 oneof_decl
 *   FieldDescriptorProto:     1 name, 2 extendee, 3 number
 *   OneofDescriptorProto:     1 name
 *   EnumDescriptorProto:      1 name, 2 value (EnumValueDescriptorProto: 1 name)
 *   ServiceDescriptorProto:   1 name, 2 method (MethodDescriptorProto: 1 name) */
#include "descriptor_index.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_I32 = 5 };

typedef struct desc_file {
    char *name;
    const unsigned char *bytes;
    size_t len;
    char **dep_names;
    size_t *deps; /* resolved file numbers, parallel to dep_names */
    size_t ndeps;
} desc_file;

typedef struct desc_symbol {
    char *name;
    size_t file;
    desc_kind kind;
} desc_symbol;

typedef struct desc_ext {
    char *extendee;
    int32_t number;
    size_t file;
} desc_ext;

struct desc_index {
    desc_file *files;
    size_t nfiles;
    desc_symbol *syms;
    size_t nsyms, capsyms;
    desc_ext *exts;
    size_t nexts, capexts;
};

/* One field read from a message. */
typedef struct pb_field {
    uint32_t num;
    int wt;
    uint64_t varint;           /* WT_VARINT */
    const unsigned char *data; /* WT_LEN */
    size_t len;
} pb_field;

typedef struct pb_reader {
    const unsigned char *p, *end;
} pb_reader;

static bool rd_varint(pb_reader *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            return false;
        unsigned char b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return true;
        }
    }
    return false; /* more than 10 bytes */
}

/* Reads the next field: 1 when one was read, 0 at the end, -1 when the bytes
 * are malformed (bad tag, truncated, groups, which descriptors never use). */
static int rd_field(pb_reader *r, pb_field *f)
{
    uint64_t tag, n;

    if (r->p == r->end)
        return 0;
    if (!rd_varint(r, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
        return -1;
    f->num = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    switch (f->wt) {
    case WT_VARINT: return rd_varint(r, &f->varint) ? 1 : -1;
    case WT_I64: n = 8; break;
    case WT_I32: n = 4; break;
    case WT_LEN:
        if (!rd_varint(r, &n))
            return -1;
        f->data = r->p;
        f->len = (size_t)n;
        break;
    default: return -1;
    }
    if (n > (uint64_t)(r->end - r->p))
        return -1;
    r->p += n;
    return 1;
}

/* Checks that msg[0..len) is a well-formed sequence of fields. */
static bool msg_well_formed(const unsigned char *msg, size_t len)
{
    pb_reader r = {msg, msg + len};
    pb_field f;
    int rc;

    while ((rc = rd_field(&r, &f)) == 1)
        ;
    return rc == 0;
}

/* The last length-delimited field `num` of a well-formed message (protobuf:
 * the last one wins); false when absent. */
static bool msg_bytes(const unsigned char *msg, size_t len, uint32_t num, const unsigned char **data,
                      size_t *dlen)
{
    pb_reader r = {msg, msg + len};
    pb_field f;
    bool found = false;

    while (rd_field(&r, &f) == 1) {
        if (f.num == num && f.wt == WT_LEN) {
            *data = f.data;
            *dlen = f.len;
            found = true;
        }
    }
    return found;
}

/* Copies a name field into a new C string. Names must be 1..DESC_MAX_NAME
 * bytes without NUL. */
static ch_status name_dup(const unsigned char *data, size_t len, char **out)
{
    if (len == 0 || len > DESC_MAX_NAME || memchr(data, 0, len))
        return CH_INVALID_ARGUMENT;
    char *s = malloc(len + 1);
    if (!s)
        return CH_NO_MEMORY;
    memcpy(s, data, len);
    s[len] = 0;
    *out = s;
    return CH_OK;
}

/* "scope.name" (or "name" at the root) into a new string. */
static ch_status name_join(const char *scope, const unsigned char *data, size_t len, char **out)
{
    size_t slen = strlen(scope);
    size_t total = slen + (slen ? 1 : 0) + len;

    if (len == 0 || total > DESC_MAX_NAME || memchr(data, 0, len))
        return CH_INVALID_ARGUMENT;
    char *s = malloc(total + 1);
    if (!s)
        return CH_NO_MEMORY;
    memcpy(s, scope, slen);
    if (slen)
        s[slen++] = '.';
    memcpy(s + slen, data, len);
    s[total] = 0;
    *out = s;
    return CH_OK;
}

static bool grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    size_t ncap = *cap ? *cap * 2 : 64;
    while (ncap < need)
        ncap *= 2;
    void *p = realloc(*arr, ncap * elem);
    if (!p)
        return false;
    *arr = p;
    *cap = ncap;
    return true;
}

/* Adds the symbol scope.name (name read from field 1 of msg); the joined
 * name goes to *full when full is not NULL (borrowed from the index). */
static ch_status add_symbol(desc_index *ix, size_t file, desc_kind kind, const char *scope,
                            const unsigned char *msg, size_t len, const char **full)
{
    const unsigned char *name;
    size_t nlen;
    char *joined;
    ch_status st;

    if (!msg_bytes(msg, len, 1, &name, &nlen))
        return CH_INVALID_ARGUMENT;
    if ((st = name_join(scope, name, nlen, &joined)) != CH_OK)
        return st;
    if (!grow((void **)&ix->syms, &ix->capsyms, ix->nsyms + 1, sizeof(*ix->syms))) {
        free(joined);
        return CH_NO_MEMORY;
    }
    ix->syms[ix->nsyms++] = (desc_symbol){.name = joined, .file = file, .kind = kind};
    if (full)
        *full = joined;
    return CH_OK;
}

/* An extension field declared in `scope`: a symbol plus an (extendee,
 * number) entry. */
static ch_status add_extension(desc_index *ix, size_t file, const char *scope, const unsigned char *msg,
                               size_t len)
{
    const unsigned char *ext;
    size_t elen;
    uint64_t number = 0;
    pb_reader r = {msg, msg + len};
    pb_field f;
    char *extendee;
    ch_status st;

    if ((st = add_symbol(ix, file, DESC_EXTENSION, scope, msg, len, NULL)) != CH_OK)
        return st;
    if (!msg_bytes(msg, len, 2, &ext, &elen))
        return CH_INVALID_ARGUMENT;
    while (rd_field(&r, &f) == 1)
        if (f.num == 3 && f.wt == WT_VARINT)
            number = f.varint;
    if (number == 0 || number > 0x1fffffff)
        return CH_INVALID_ARGUMENT;
    if (elen && ext[0] == '.') { /* protoc writes resolved names as ".pkg.Msg" */
        ext++;
        elen--;
    }
    if ((st = name_dup(ext, elen, &extendee)) != CH_OK)
        return st;
    if (!grow((void **)&ix->exts, &ix->capexts, ix->nexts + 1, sizeof(*ix->exts))) {
        free(extendee);
        return CH_NO_MEMORY;
    }
    ix->exts[ix->nexts++] = (desc_ext){.extendee = extendee, .number = (int32_t)number, .file = file};
    return CH_OK;
}

/* Indexes an enum or a service and its children (field 2 of both: enum
 * values, methods). Enum values are siblings of their enum, as in C++;
 * methods live inside their service. */
static ch_status index_with_children(desc_index *ix, size_t file, desc_kind kind, const char *scope,
                                     const unsigned char *msg, size_t len)
{
    pb_reader r = {msg, msg + len};
    pb_field f;
    const char *full;
    ch_status st;

    if ((st = add_symbol(ix, file, kind, scope, msg, len, &full)) != CH_OK)
        return st;
    while (rd_field(&r, &f) == 1) {
        if (f.num != 2 || f.wt != WT_LEN)
            continue;
        if (!msg_well_formed(f.data, f.len))
            return CH_INVALID_ARGUMENT;
        st = kind == DESC_ENUM ? add_symbol(ix, file, DESC_ENUM_VALUE, scope, f.data, f.len, NULL)
                               : add_symbol(ix, file, DESC_METHOD, full, f.data, f.len, NULL);
        if (st != CH_OK)
            return st;
    }
    return CH_OK;
}

static ch_status index_message(desc_index *ix, size_t file, const char *scope, const unsigned char *msg,
                               size_t len, int depth)
{
    pb_reader r = {msg, msg + len};
    pb_field f;
    const char *full;
    ch_status st = CH_OK;

    if (depth > DESC_MAX_DEPTH)
        return CH_INVALID_ARGUMENT;
    if ((st = add_symbol(ix, file, DESC_MESSAGE, scope, msg, len, &full)) != CH_OK)
        return st;
    while (st == CH_OK && rd_field(&r, &f) == 1) {
        if (f.wt != WT_LEN)
            continue;
        if (f.num != 2 && f.num != 3 && f.num != 4 && f.num != 6 && f.num != 8)
            continue;
        if (!msg_well_formed(f.data, f.len))
            return CH_INVALID_ARGUMENT;
        switch (f.num) {
        case 2: st = add_symbol(ix, file, DESC_FIELD, full, f.data, f.len, NULL); break;
        case 3: st = index_message(ix, file, full, f.data, f.len, depth + 1); break;
        case 4: st = index_with_children(ix, file, DESC_ENUM, full, f.data, f.len); break;
        case 6: st = add_extension(ix, file, full, f.data, f.len); break;
        case 8: st = add_symbol(ix, file, DESC_ONEOF, full, f.data, f.len, NULL); break;
        }
    }
    return st;
}

/* One FileDescriptorProto: name, dependencies, then its declarations. */
static ch_status index_file(desc_index *ix, size_t file, const unsigned char *msg, size_t len)
{
    desc_file *df = &ix->files[file];
    const unsigned char *data;
    size_t dlen, ndeps = 0;
    char *package = NULL;
    pb_reader r = {msg, msg + len};
    pb_field f;
    ch_status st = CH_OK;

    df->bytes = msg;
    df->len = len;
    if (!msg_well_formed(msg, len) || !msg_bytes(msg, len, 1, &data, &dlen))
        return CH_INVALID_ARGUMENT;
    if ((st = name_dup(data, dlen, &df->name)) != CH_OK)
        return st;
    if (msg_bytes(msg, len, 2, &data, &dlen) && dlen > 0)
        st = name_dup(data, dlen, &package);
    else
        package = calloc(1, 1);
    if (st != CH_OK || !package)
        return st != CH_OK ? st : CH_NO_MEMORY;

    while (rd_field(&r, &f) == 1)
        if (f.num == 3 && f.wt == WT_LEN)
            ndeps++;
    if (ndeps > DESC_MAX_FILES) {
        st = CH_INVALID_ARGUMENT;
        goto cleanup;
    }
    if (ndeps) {
        df->dep_names = calloc(ndeps, sizeof(*df->dep_names));
        df->deps = calloc(ndeps, sizeof(*df->deps));
        if (!df->dep_names || !df->deps) {
            st = CH_NO_MEMORY;
            goto cleanup;
        }
    }

    r = (pb_reader){msg, msg + len};
    while (st == CH_OK && rd_field(&r, &f) == 1) {
        if (f.wt != WT_LEN)
            continue;
        if (f.num == 3) {
            st = name_dup(f.data, f.len, &df->dep_names[df->ndeps]);
            if (st == CH_OK)
                df->ndeps++;
            continue;
        }
        if (f.num < 4 || f.num > 7)
            continue;
        if (!msg_well_formed(f.data, f.len)) {
            st = CH_INVALID_ARGUMENT;
            break;
        }
        switch (f.num) {
        case 4: st = index_message(ix, file, package, f.data, f.len, 1); break;
        case 5: st = index_with_children(ix, file, DESC_ENUM, package, f.data, f.len); break;
        case 6: st = index_with_children(ix, file, DESC_SERVICE, package, f.data, f.len); break;
        case 7: st = add_extension(ix, file, package, f.data, f.len); break;
        }
    }

cleanup:
    free(package);
    return st;
}

static int symbol_cmp(const void *a, const void *b)
{
    return strcmp(((const desc_symbol *)a)->name, ((const desc_symbol *)b)->name);
}

/* Resolves dependency names to file numbers and sorts the symbols; rejects
 * duplicates, which a valid set never has. */
static ch_status index_finish(desc_index *ix, const char **why)
{
    for (size_t i = 0; i < ix->nfiles; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(ix->files[i].name, ix->files[j].name) == 0) {
                *why = "file named twice";
                return CH_INVALID_ARGUMENT;
            }
        }
    }
    for (size_t i = 0; i < ix->nfiles; i++) {
        desc_file *df = &ix->files[i];
        for (size_t d = 0; d < df->ndeps; d++) {
            if (desc_index_find_file(ix, df->dep_names[d], &df->deps[d]) != CH_OK) {
                *why = "dependency missing from the set (use --include_imports)";
                return CH_INVALID_ARGUMENT;
            }
        }
    }
    if (ix->nsyms)
        qsort(ix->syms, ix->nsyms, sizeof(*ix->syms), symbol_cmp);
    for (size_t i = 1; i < ix->nsyms; i++) {
        if (strcmp(ix->syms[i - 1].name, ix->syms[i].name) == 0) {
            *why = "symbol declared twice";
            return CH_INVALID_ARGUMENT;
        }
    }
    return CH_OK;
}

ch_status desc_index_create(desc_index **out, const unsigned char *fds, size_t len)
{
    desc_index *ix = NULL;
    pb_reader r = {fds, fds + len};
    pb_field f;
    size_t nfiles = 0;
    int rc;
    const char *why = "malformed descriptor";
    ch_status st = CH_OK;

    *out = NULL;
    if (!fds && len) {
        st = CH_INVALID_ARGUMENT;
        goto cleanup;
    }
    while ((rc = rd_field(&r, &f)) == 1)
        if (f.num == 1 && f.wt == WT_LEN)
            nfiles++;
    if (rc < 0 || nfiles == 0 || nfiles > DESC_MAX_FILES) {
        why = rc < 0 ? "malformed FileDescriptorSet" : "no file, or too many";
        st = CH_INVALID_ARGUMENT;
        goto cleanup;
    }
    ix = calloc(1, sizeof(*ix));
    if (!ix || !(ix->files = calloc(nfiles, sizeof(*ix->files)))) {
        st = CH_NO_MEMORY;
        goto cleanup;
    }

    r = (pb_reader){fds, fds + len};
    while (st == CH_OK && rd_field(&r, &f) == 1) {
        if (f.num != 1 || f.wt != WT_LEN)
            continue;
        ix->nfiles++; /* counted before parsing so destroy frees a partial file */
        st = index_file(ix, ix->nfiles - 1, f.data, f.len);
    }
    if (st == CH_OK)
        st = index_finish(ix, &why);

cleanup:
    if (st != CH_OK) {
        char n[32];
        snprintf(n, sizeof(n), "%zu", ix ? ix->nfiles : 0);
        log_warn("descriptor set rejected", "status", ch_status_str(st), "reason", why, "file", n, NULL);
        desc_index_destroy(ix);
        return st;
    }
    *out = ix;
    return CH_OK;
}

void desc_index_destroy(desc_index *ix)
{
    if (!ix)
        return;
    for (size_t i = 0; i < ix->nfiles; i++) {
        desc_file *df = &ix->files[i];
        for (size_t d = 0; d < df->ndeps; d++)
            free(df->dep_names[d]);
        free(df->dep_names);
        free(df->deps);
        free(df->name);
    }
    free(ix->files);
    for (size_t i = 0; i < ix->nsyms; i++)
        free(ix->syms[i].name);
    free(ix->syms);
    for (size_t i = 0; i < ix->nexts; i++)
        free(ix->exts[i].extendee);
    free(ix->exts);
    free(ix);
}

size_t desc_index_file_count(const desc_index *ix)
{
    return ix->nfiles;
}

const char *desc_index_file_name(const desc_index *ix, size_t file)
{
    return file < ix->nfiles ? ix->files[file].name : NULL;
}

const unsigned char *desc_index_file_bytes(const desc_index *ix, size_t file, size_t *len)
{
    if (file >= ix->nfiles) {
        *len = 0;
        return NULL;
    }
    *len = ix->files[file].len;
    return ix->files[file].bytes;
}

ch_status desc_index_find_file(const desc_index *ix, const char *name, size_t *file)
{
    for (size_t i = 0; i < ix->nfiles; i++) {
        if (ix->files[i].name && strcmp(ix->files[i].name, name) == 0) {
            *file = i;
            return CH_OK;
        }
    }
    return CH_NOT_FOUND;
}

ch_status desc_index_find_symbol(const desc_index *ix, const char *symbol, size_t *file, desc_kind *kind)
{
    desc_symbol key = {.name = (char *)symbol};
    const desc_symbol *hit;

    if (ix->nsyms == 0)
        return CH_NOT_FOUND;
    hit = bsearch(&key, ix->syms, ix->nsyms, sizeof(*ix->syms), symbol_cmp);
    if (!hit)
        return CH_NOT_FOUND;
    *file = hit->file;
    if (kind)
        *kind = hit->kind;
    return CH_OK;
}

ch_status desc_index_find_extension(const desc_index *ix, const char *extendee, int32_t number, size_t *file)
{
    for (size_t i = 0; i < ix->nexts; i++) {
        if (ix->exts[i].number == number && strcmp(ix->exts[i].extendee, extendee) == 0) {
            *file = ix->exts[i].file;
            return CH_OK;
        }
    }
    return CH_NOT_FOUND;
}

size_t desc_index_extension_numbers(const desc_index *ix, const char *extendee, int32_t *out, size_t cap)
{
    size_t n = 0;

    for (size_t i = 0; i < ix->nexts; i++) {
        if (strcmp(ix->exts[i].extendee, extendee) != 0)
            continue;
        if (n < cap)
            out[n] = ix->exts[i].number;
        n++;
    }
    return n;
}

size_t desc_index_closure(const desc_index *ix, size_t file, size_t *out, size_t cap)
{
    size_t n = 0;

    if (file >= ix->nfiles || cap == 0)
        return 0;
    out[n++] = file;
    /* out doubles as the breadth-first queue; sets are small, so the
     * membership test is a linear scan rather than an allocation. */
    for (size_t head = 0; head < n; head++) {
        const desc_file *df = &ix->files[out[head]];
        for (size_t d = 0; d < df->ndeps; d++) {
            bool seen = false;
            for (size_t k = 0; k < n && !seen; k++)
                seen = out[k] == df->deps[d];
            if (!seen && n < cap)
                out[n++] = df->deps[d];
        }
    }
    return n;
}
