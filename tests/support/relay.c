/* relay.c: see relay.h. */
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proc.h"

#define RELAY_MAX_LINKS 8
#define RELAY_CHUNK     65536
#define RELAY_PATTERN   64 /* bytes of a trigger pattern, NUL included */

typedef struct relay_link {
    int cfd; /* the client's side */
    int sfd; /* the server's side */
    char *held;
    size_t held_len, held_cap;
    char tail[RELAY_PATTERN]; /* the client's last bytes, for a pattern split between reads */
    size_t tail_len;
} relay_link;

struct relay {
    int lfd;
    int wake[2]; /* written by relay_destroy */
    int target_port;
    char url[64];
    pthread_t thread;
    atomic_bool stop;

    pthread_mutex_t mu; /* guards the fields below */
    long long hold_until_ms;
    long long replied;
    char pattern[RELAY_PATTERN]; /* "" when no trigger is armed */
    int hold_after_ms;
    int triggered;

    relay_link links[RELAY_MAX_LINKS]; /* the thread's own */
    int nlinks;
};

static bool write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL); /* a closed peer is an error, not SIGPIPE */
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static void link_close(relay *r, int i)
{
    close(r->links[i].cfd);
    close(r->links[i].sfd);
    free(r->links[i].held);
    r->links[i] = r->links[--r->nlinks];
}

static void relay_accept(relay *r)
{
    int cfd = accept(r->lfd, NULL, NULL);
    if (cfd < 0) {
        return;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->target_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int sfd = socket(AF_INET, SOCK_STREAM, 0);
    if (r->nlinks == RELAY_MAX_LINKS || sfd < 0 || connect(sfd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(cfd); /* the client sees a refused server and retries */
        if (sfd >= 0) {
            close(sfd);
        }
        return;
    }
    r->links[r->nlinks++] = (relay_link){.cfd = cfd, .sfd = sfd};
}

/* Fires the armed trigger if the client's bytes (after what it sent
 * before) contain its pattern. */
static void relay_check_trigger(relay *r, relay_link *l, const char *buf, size_t n)
{
    pthread_mutex_lock(&r->mu);
    size_t plen = strlen(r->pattern);
    if (plen > 0) {
        char edge[2 * RELAY_PATTERN];
        size_t head = n < plen ? n : plen;
        memcpy(edge, l->tail, l->tail_len);
        memcpy(edge + l->tail_len, buf, head);
        if (memmem(buf, n, r->pattern, plen) || memmem(edge, l->tail_len + head, r->pattern, plen)) {
            r->hold_until_ms = test_now_ms() + r->hold_after_ms;
            r->pattern[0] = '\0';
            r->triggered++;
        }
    }
    pthread_mutex_unlock(&r->mu);
    /* keep the stream's last RELAY_PATTERN - 1 bytes */
    const size_t cap = RELAY_PATTERN - 1;
    if (n >= cap) {
        memcpy(l->tail, buf + n - cap, cap);
        l->tail_len = cap;
        return;
    }
    size_t drop = l->tail_len + n > cap ? l->tail_len + n - cap : 0;
    memmove(l->tail, l->tail + drop, l->tail_len - drop);
    l->tail_len -= drop;
    memcpy(l->tail + l->tail_len, buf, n);
    l->tail_len += n;
}

/* Moves what one side has to say; false when that side is gone. */
static bool link_pump(relay *r, relay_link *l, bool from_client)
{
    char buf[RELAY_CHUNK];
    ssize_t n = read(from_client ? l->cfd : l->sfd, buf, sizeof buf);
    if (n <= 0) {
        return n < 0 && errno == EINTR;
    }
    if (from_client) {
        relay_check_trigger(r, l, buf, (size_t)n); /* before the server can answer */
        return write_all(l->sfd, buf, (size_t)n);
    }
    if (l->held_len + (size_t)n > l->held_cap) {
        size_t cap = (l->held_len + (size_t)n) * 2;
        char *p = realloc(l->held, cap);
        if (!p) {
            return false;
        }
        l->held = p;
        l->held_cap = cap;
    }
    memcpy(l->held + l->held_len, buf, (size_t)n);
    l->held_len += (size_t)n;
    return true;
}

/* Lets the server's bytes through unless they are being held. */
static void relay_release(relay *r)
{
    pthread_mutex_lock(&r->mu);
    bool holding = test_now_ms() < r->hold_until_ms;
    pthread_mutex_unlock(&r->mu);
    if (holding) {
        return;
    }
    for (int i = 0; i < r->nlinks; i++) {
        relay_link *l = &r->links[i];
        if (l->held_len == 0) {
            continue;
        }
        bool ok = write_all(l->cfd, l->held, l->held_len);
        pthread_mutex_lock(&r->mu);
        r->replied += (long long)l->held_len;
        pthread_mutex_unlock(&r->mu);
        l->held_len = 0;
        if (!ok) {
            link_close(r, i--);
        }
    }
}

static void *relay_main(void *arg)
{
    relay *r = arg;
    struct pollfd pf[2 + 2 * RELAY_MAX_LINKS];
    while (!atomic_load(&r->stop)) {
        int n = 0;
        pf[n++] = (struct pollfd){.fd = r->lfd, .events = POLLIN};
        pf[n++] = (struct pollfd){.fd = r->wake[0], .events = POLLIN};
        for (int i = 0; i < r->nlinks; i++) {
            pf[n++] = (struct pollfd){.fd = r->links[i].cfd, .events = POLLIN};
            pf[n++] = (struct pollfd){.fd = r->links[i].sfd, .events = POLLIN};
        }
        int nlinks = r->nlinks;
        if (poll(pf, (nfds_t)n, 5) < 0 && errno != EINTR) {
            break;
        }
        /* Links last to first, so that closing one moves none not yet seen. */
        for (int i = nlinks - 1; i >= 0; i--) {
            short cev = pf[2 + 2 * i].revents, sev = pf[3 + 2 * i].revents;
            if (((cev & (POLLIN | POLLHUP | POLLERR)) && !link_pump(r, &r->links[i], true)) ||
                ((sev & (POLLIN | POLLHUP | POLLERR)) && !link_pump(r, &r->links[i], false))) {
                link_close(r, i);
            }
        }
        if (pf[0].revents & POLLIN) {
            relay_accept(r);
        }
        relay_release(r);
    }
    while (r->nlinks > 0) {
        link_close(r, r->nlinks - 1);
    }
    return NULL;
}

ch_status relay_start(relay **out, int target_port)
{
    *out = NULL;
    relay *r = calloc(1, sizeof *r);
    if (!r) {
        return CH_NO_MEMORY;
    }
    r->target_port = target_port;
    r->wake[0] = r->wake[1] = -1;
    pthread_mutex_init(&r->mu, NULL);
    atomic_init(&r->stop, false);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (r->lfd < 0 || bind(r->lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(r->lfd, 16) != 0 ||
        getsockname(r->lfd, (struct sockaddr *)&sa, &len) != 0 || pipe(r->wake) != 0 ||
        pthread_create(&r->thread, NULL, relay_main, r) != 0) {
        fprintf(stderr, "relay: cannot start: %s\n", strerror(errno));
        if (r->lfd >= 0) {
            close(r->lfd);
        }
        if (r->wake[0] >= 0) {
            close(r->wake[0]);
            close(r->wake[1]);
        }
        pthread_mutex_destroy(&r->mu);
        free(r);
        return CH_INTERNAL;
    }
    snprintf(r->url, sizeof r->url, "nats://127.0.0.1:%d", ntohs(sa.sin_port));
    *out = r;
    return CH_OK;
}

const char *relay_url(const relay *r)
{
    return r->url;
}

void relay_hold_replies(relay *r, int ms)
{
    pthread_mutex_lock(&r->mu);
    r->hold_until_ms = test_now_ms() + ms;
    pthread_mutex_unlock(&r->mu);
}

void relay_hold_replies_after(relay *r, const char *pattern, int ms)
{
    pthread_mutex_lock(&r->mu);
    snprintf(r->pattern, sizeof r->pattern, "%s", pattern);
    r->hold_after_ms = ms;
    pthread_mutex_unlock(&r->mu);
}

int relay_triggered(relay *r)
{
    pthread_mutex_lock(&r->mu);
    int n = r->triggered;
    pthread_mutex_unlock(&r->mu);
    return n;
}

long long relay_replied_bytes(relay *r)
{
    pthread_mutex_lock(&r->mu);
    long long n = r->replied;
    pthread_mutex_unlock(&r->mu);
    return n;
}

void relay_destroy(relay *r)
{
    if (!r) {
        return;
    }
    atomic_store(&r->stop, true);
    ssize_t w = write(r->wake[1], "x", 1);
    (void)w;
    pthread_join(r->thread, NULL);
    close(r->lfd);
    close(r->wake[0]);
    close(r->wake[1]);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
