/* url_list.c: a comma-separated list of NATS server URLs, split and checked. */
#include "url_list.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Checks one entry (NUL-terminated, trimmed); writes what is wrong into why. */
static bool entry_valid(const char *u, char *why, size_t cap)
{
    const char *host = strstr(u, "://");
    const char *p;

    for (p = u; *p; p++)
        if (isspace((unsigned char)*p) || iscntrl((unsigned char)*p)) {
            snprintf(why, cap, "blank or control character inside the URL");
            return false;
        }
    if (host) {
        size_t scheme = (size_t)(host - u);
        if (!(scheme == 4 && strncmp(u, "nats", 4) == 0) && !(scheme == 3 && strncmp(u, "tls", 3) == 0)) {
            snprintf(why, cap, "scheme must be nats:// or tls://");
            return false;
        }
        host += 3;
    } else {
        host = u;
    }
    const char *at = strrchr(host, '@');
    if (at)
        host = at + 1;
    const char *colon = strrchr(host, ':');
    const char *bracket = strrchr(host, ']'); /* [::1]:4222 */
    if (colon && bracket && colon < bracket)
        colon = NULL;
    size_t host_len = colon ? (size_t)(colon - host) : strlen(host);
    if (host_len == 0) {
        snprintf(why, cap, "no host");
        return false;
    }
    if (colon) {
        char *end = NULL;
        long port = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || port < 1 || port > 65535) {
            snprintf(why, cap, "port must be 1..65535");
            return false;
        }
    }
    return true;
}

ch_status url_list_parse(const char *text, url_list *out, char *err, size_t errlen)
{
    const char *p = text ? text : "";

    memset(out, 0, sizeof *out);
    for (int i = 1;; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char why[64];

        while (len > 0 && isspace((unsigned char)*p)) {
            p++;
            len--;
        }
        while (len > 0 && isspace((unsigned char)p[len - 1]))
            len--;
        if (out->n == URL_LIST_MAX) {
            snprintf(err, errlen, "more than %d server URLs", URL_LIST_MAX);
            return CH_INVALID_ARGUMENT;
        }
        if (len == 0 || len > URL_LIST_URL_MAX) {
            snprintf(err, errlen, "entry %d: must be 1..%d bytes (an empty entry or a stray comma?)", i,
                     URL_LIST_URL_MAX);
            return CH_INVALID_ARGUMENT;
        }
        char *u = out->urls[out->n];
        memcpy(u, p, len);
        u[len] = '\0';
        if (!entry_valid(u, why, sizeof why)) {
            snprintf(err, errlen, "entry %d (\"%.64s\"): %s", i, u, why);
            return CH_INVALID_ARGUMENT;
        }
        out->ptrs[out->n] = u;
        out->n++;
        if (!end)
            return CH_OK;
        p = end + 1;
    }
}
