/* relay.h: a TCP relay between clients and a server on 127.0.0.1 that can
 * hold back what the server sends, to make replies late on demand.
 *
 * A test points its client at relay_url() instead of the server. Bytes go
 * through unchanged and in order; relay_hold_replies(r, ms) keeps the
 * server-to-client direction buffered for ms milliseconds (the server still
 * receives and acts on everything the client sends), then lets it all
 * through at once. That is how a reply that is lost for the client, while
 * the server did the work, looks from the client: e.g. a JetStream publish
 * stored but whose acknowledgement comes after the client gave up.
 *
 * The caller owns the relay (relay_destroy). One thread serves every
 * connection; functions may be called from any thread. */
#ifndef CHOREO_TEST_RELAY_H
#define CHOREO_TEST_RELAY_H

#include "status.h"

typedef struct relay relay;

/* Listens on a free port of 127.0.0.1 and relays each accepted connection
 * to 127.0.0.1:target_port. CH_INTERNAL on socket or thread failure. */
ch_status relay_start(relay **out, int target_port);

/* "nats://127.0.0.1:PORT" of the relay; lives as long as r. */
const char *relay_url(const relay *r);

/* From now on, the server's bytes wait ms milliseconds before they go on
 * (bytes already waiting go with them). */
void relay_hold_replies(relay *r, int ms);

/* Arms a one-shot trigger: as soon as a client sends bytes that contain
 * pattern (at most 63 bytes; e.g. the subject of a publish), the server's
 * bytes are held for ms milliseconds from then on, as relay_hold_replies
 * does. The reply to that very message is among them. */
void relay_hold_replies_after(relay *r, const char *pattern, int ms);

/* How many times an armed trigger has fired. */
int relay_triggered(relay *r);

/* Bytes that went from the server to clients so far. */
long long relay_replied_bytes(relay *r);

/* Closes every connection and the listener, stops the thread, frees r.
 * Accepts NULL. */
void relay_destroy(relay *r);

#endif
