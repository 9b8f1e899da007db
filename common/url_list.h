/* url_list.h: a list of NATS server URLs, as CHOREO_NATS_URL gives it.
 *
 * A NATS cluster is reached through several servers: the setting holds their
 * URLs separated by commas ("nats://nats-0:4222,nats://nats-1:4222"), and the
 * client takes them as its server pool (natsOptions_SetServers), not as one
 * URL. This module splits and checks such a list once, so that a bad entry
 * is refused at start-up (and by --check-config) with the entry named.
 *
 * Ownership: the caller owns the url_list; it holds copies. Threads: any. */
#ifndef CHOREO_URL_LIST_H
#define CHOREO_URL_LIST_H

#include <stddef.h>

#include "status.h"

#define URL_LIST_MAX     16  /* servers in one list */
#define URL_LIST_URL_MAX 255 /* bytes of one URL */

typedef struct url_list {
    char urls[URL_LIST_MAX][URL_LIST_URL_MAX + 1];
    const char *ptrs[URL_LIST_MAX]; /* urls[i], for APIs that take const char ** */
    int n;
} url_list;

/* Splits text at commas (blanks around an entry are dropped) into out. Each
 * entry is "host:port", "host" or "<scheme>://host[:port]" with scheme nats
 * or tls, an optional "user:password@" before the host, and a port 1..65535.
 * CH_INVALID_ARGUMENT with a message naming the entry ("entry 2
 * (\"nats://a:99999\"): port must be 1..65535") for an empty list or entry,
 * a blank inside an entry, an unknown scheme, a missing host, a bad port, or
 * more than URL_LIST_MAX entries. */
ch_status url_list_parse(const char *text, url_list *out, char *err, size_t errlen);

#endif
