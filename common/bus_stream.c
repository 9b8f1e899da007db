/* bus_stream.c: streams and consumers: provisioning them (idempotently),
 * asking about them, purging and deleting, and reading a stream back (by
 * sequence, or in order from a sequence with an ephemeral pull consumer). */
#include "bus_internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"

#define BUS_REPLAY_BATCH    512
#define BUS_REPLAY_STALL_MS 10000

/* ---- provisioning ------------------------------------------------------------ */

ch_status bus_ensure_stream(bus *b, const bus_stream_spec *sp)
{
    if (!b || !sp || !sp->name || !sp->subjects[0]) {
        return CH_INVALID_ARGUMENT;
    }
    const char *subjects[BUS_MAX_SUBJECTS];
    int nsub = 0;
    while (nsub < BUS_MAX_SUBJECTS && sp->subjects[nsub]) {
        subjects[nsub] = sp->subjects[nsub];
        nsub++;
    }
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = sp->name;
    cfg.Subjects = subjects;
    cfg.SubjectsLen = nsub;
    cfg.Storage = sp->storage == BUS_STORAGE_MEMORY ? js_MemoryStorage : js_FileStorage;
    cfg.Replicas = sp->replicas > 0 ? sp->replicas : 1;
    cfg.Duplicates = sp->duplicate_window_ms > 0 ? sp->duplicate_window_ms * 1000000LL : 0;
    cfg.MaxMsgSize = sp->max_msg_size > 0 ? sp->max_msg_size : -1;
    cfg.MaxAge = sp->max_age_ms > 0 ? sp->max_age_ms * 1000000LL : 0;

    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_AddStream(&si, b->js, &cfg, NULL, &ec);
    /* Services start together: when another one is creating the same stream
     * at this moment, the server may answer "subjects overlap" instead of
     * "exists". Ask again; a real overlap with another stream persists. */
    for (int attempt = 0; s != NATS_OK && ec == JSStreamSubjectOverlapErr && attempt < 5; attempt++) {
        bus__sleep_ms(50 + 50 * attempt);
        ec = 0;
        s = js_AddStream(&si, b->js, &cfg, NULL, &ec);
    }
    if (s == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return CH_OK;
    }
    if (ec != JSStreamNameExistErr) {
        return bus__fail("stream create failed", sp->name, s, ec);
    }
    /* It exists with a different configuration: update what can change. */
    ec = 0;
    s = js_UpdateStream(&si, b->js, &cfg, NULL, &ec);
    if (s != NATS_OK) {
        ch_status st = bus__fail("stream update failed", sp->name, s, ec);
        return st == CH_INTERNAL ? CH_FAILED_PRECONDITION : st;
    }
    jsStreamInfo_Destroy(si);
    log_info("stream updated", "name", sp->name, NULL);
    return CH_OK;
}

ch_status bus_ensure_deadletter_stream(bus *b, int replicas)
{
    bus_stream_spec s = {
        .name = BUS_DEADLETTER_STREAM,
        .subjects = {BUS_DEADLETTER_PREFIX ".>"},
        .storage = BUS_STORAGE_FILE,
        .replicas = replicas,
    };
    return bus_ensure_stream(b, &s);
}

/* Where a durable's messages are pushed: one subject per durable, outside
 * every stream, with the durable's name as the queue group so that the
 * replicas of a service share its messages (competing consumers). */
static void bus__deliver_subject(char *buf, size_t cap, const char *stream, const char *durable)
{
    snprintf(buf, cap, "_choreo.deliver.%s.%s", stream, durable);
}

static void bus__consumer_config(jsConsumerConfig *cc, const bus_consumer_spec *c, const char *deliver)
{
    jsConsumerConfig_Init(cc);
    cc->Durable = c->durable;
    cc->DeliverSubject = deliver;
    cc->DeliverGroup = c->durable;
    cc->DeliverPolicy = js_DeliverAll;
    cc->AckPolicy = js_AckExplicit;
    cc->AckWait = (int64_t)(c->ack_wait_ms > 0 ? c->ack_wait_ms : 30000) * 1000000LL;
    cc->MaxDeliver = c->max_deliver > 0 ? c->max_deliver : -1;
    cc->MaxAckPending = c->max_ack_pending > 0 ? c->max_ack_pending : 1000;
    cc->FilterSubject = c->filter_subject;
}

ch_status bus_ensure_consumer(bus *b, const bus_consumer_spec *c)
{
    if (!b || !c || !c->stream || !c->durable) {
        return CH_INVALID_ARGUMENT;
    }
    char deliver[BUS_SUBJECT_MAX];
    bus__deliver_subject(deliver, sizeof deliver, c->stream, c->durable);
    jsConsumerConfig cc;
    bus__consumer_config(&cc, c, deliver);
    jsConsumerInfo *ci = NULL;
    jsErrCode ec = 0;
    /* A pull consumer of the same name (an older choreo) cannot become a
     * push one: replace it. Its position is lost, so its events are
     * delivered again, which idempotent handlers absorb. */
    if (js_GetConsumerInfo(&ci, b->js, c->stream, c->durable, NULL, &ec) == NATS_OK) {
        bool pull = !ci->Config || !ci->Config->DeliverSubject;
        jsConsumerInfo_Destroy(ci);
        ci = NULL;
        if (pull) {
            log_warn("replacing pull consumer by a push consumer", "name", c->durable, NULL);
            js_DeleteConsumer(b->js, c->stream, c->durable, NULL, NULL);
        }
    }
    ec = 0;
    natsStatus s = js_AddConsumer(&ci, b->js, c->stream, &cc, NULL, &ec);
    if (s == NATS_OK) {
        jsConsumerInfo_Destroy(ci);
        return CH_OK;
    }
    if (ec == JSStreamNotFoundErr || s != NATS_ERR) {
        return bus__fail("consumer create failed", c->durable, s, ec);
    }
    ec = 0;
    s = js_UpdateConsumer(&ci, b->js, c->stream, &cc, NULL, &ec);
    if (s != NATS_OK) {
        return bus__fail("consumer update failed", c->durable, s, ec);
    }
    jsConsumerInfo_Destroy(ci);
    log_info("consumer updated", "name", c->durable, NULL);
    return CH_OK;
}

ch_status bus_delete_consumer(bus *b, const char *stream, const char *durable)
{
    jsErrCode ec = 0;
    if (!b || !stream || !durable) {
        return CH_INVALID_ARGUMENT;
    }
    natsStatus s = js_DeleteConsumer(b->js, stream, durable, NULL, &ec);
    if (s != NATS_OK) {
        return bus__fail("consumer not deleted", durable, s, ec);
    }
    return CH_OK;
}

ch_status bus_purge_stream(bus *b, const char *stream)
{
    jsErrCode ec = 0;
    if (!b || !stream) {
        return CH_INVALID_ARGUMENT;
    }
    natsStatus s = js_PurgeStream(b->js, stream, NULL, &ec);
    return s == NATS_OK ? CH_OK : bus__fail("stream not purged", stream, s, ec);
}

/* The state of a stream: js_GetStreamInfo's, one conversion of its errors. */
static ch_status bus__stream_state(bus *b, const char *stream, jsStreamState *out)
{
    if (!b || !stream) {
        return CH_INVALID_ARGUMENT;
    }
    jsStreamInfo *si = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetStreamInfo(&si, b->js, stream, NULL, &ec);
    if (s != NATS_OK) {
        if (s == NATS_NOT_FOUND || ec == JSStreamNotFoundErr) {
            return CH_NOT_FOUND;
        }
        return bus__fail("stream info failed", stream, s, ec);
    }
    *out = si->State;
    out->Deleted = NULL; /* owned by si */
    out->Subjects = NULL;
    out->Lost = NULL;
    jsStreamInfo_Destroy(si);
    return CH_OK;
}

ch_status bus_stream_info(bus *b, const char *stream, uint64_t *msgs, uint64_t *last_seq)
{
    jsStreamState state;
    ch_status st = bus__stream_state(b, stream, &state);
    if (st == CH_OK && msgs) {
        *msgs = state.Msgs;
    }
    if (st == CH_OK && last_seq) {
        *last_seq = state.LastSeq;
    }
    return st;
}

ch_status bus_stream_first_seq(bus *b, const char *stream, uint64_t *first_seq)
{
    jsStreamState state;
    ch_status st = bus__stream_state(b, stream, &state);
    if (st == CH_OK) {
        *first_seq = state.FirstSeq;
    }
    return st;
}

/* ---- reading back ------------------------------------------------------------ */

ch_status bus_get_seq(bus *b, const char *stream, uint64_t seq, bus_replay_fn fn, void *ctx)
{
    if (!b || !stream || !fn || seq == 0) {
        return CH_INVALID_ARGUMENT;
    }
    natsMsg *msg = NULL;
    jsErrCode ec = 0;
    natsStatus s = js_GetMsg(&msg, b->js, stream, seq, NULL, &ec);
    if (s != NATS_OK) {
        if (s == NATS_NOT_FOUND || ec == JSNoMessageFoundErr) {
            return CH_NOT_FOUND;
        }
        return bus__fail("get message failed", stream, s, ec);
    }
    bus_in_msg in;
    memset(&in, 0, sizeof in);
    in.subject = natsMsg_GetSubject(msg);
    in.data = (const uint8_t *)natsMsg_GetData(msg);
    in.len = (size_t)natsMsg_GetDataLength(msg);
    in.priv_ = msg;
    in.deliveries = 1;
    in.stream_seq = seq;
    ch_status st = fn(&in, ctx);
    natsMsg_Destroy(msg);
    return st;
}

ch_status bus_replay(bus *b, const char *stream, const char *filter_subject, uint64_t start_seq,
                     bus_replay_fn fn, void *ctx, uint64_t *last_seq_out)
{
    if (!b || !stream || !fn) {
        return CH_INVALID_ARGUMENT;
    }
    if (start_seq == 0) {
        start_seq = 1;
    }
    uint64_t delivered_last = start_seq - 1;
    ch_status st = CH_OK;
    jsConsumerInfo *ci = NULL;
    natsSubscription *sub = NULL;
    natsStatus s;
    jsErrCode ec = 0;
    uint64_t end_seq = 0;

    st = bus_stream_info(b, stream, NULL, &end_seq);
    if (st != CH_OK || end_seq < start_seq) {
        goto cleanup;
    }
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.DeliverPolicy = js_DeliverByStartSequence;
    cc.OptStartSeq = start_seq;
    cc.AckPolicy = js_AckNone;
    cc.FilterSubject = filter_subject;
    cc.MaxDeliver = 1;
    cc.InactiveThreshold = 60LL * 1000000000LL;
    s = js_AddConsumer(&ci, b->js, stream, &cc, NULL, &ec);
    if (s != NATS_OK) {
        st = bus__fail("replay consumer failed", stream, s, ec);
        goto cleanup;
    }
    if (ci->NumPending == 0) {
        goto cleanup;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = ci->Name;
    s = js_PullSubscribe(&sub, b->js, filter_subject ? filter_subject : ">", ci->Name, NULL, &so, &ec);
    if (s != NATS_OK) {
        st = bus__fail("replay subscribe failed", stream, s, ec);
        goto cleanup;
    }
    natsSubscription_SetPendingLimits(sub, b->max_pending_msgs, b->max_pending_bytes);
    int64_t last_progress = bus__now_ms();
    bool done = false;
    while (!done) {
        natsMsgList list = {0};
        ec = 0;
        s = natsSubscription_Fetch(&list, sub, BUS_REPLAY_BATCH, 1000, &ec);
        if (s == NATS_TIMEOUT) {
            natsMsgList_Destroy(&list);
            if (bus__now_ms() - last_progress > BUS_REPLAY_STALL_MS) {
                st = bus__fail("replay stalled", stream, s, ec);
                break;
            }
            continue;
        }
        if (s != NATS_OK) {
            natsMsgList_Destroy(&list);
            st = bus__fail("replay fetch failed", stream, s, ec);
            break;
        }
        last_progress = bus__now_ms();
        for (int i = 0; i < list.Count && !done; i++) {
            bus_in_msg in;
            bus__in_msg(&in, list.Msgs[i]);
            jsMsgMetaData *meta = NULL;
            uint64_t pending = 1;
            if (natsMsg_GetMetaData(&meta, list.Msgs[i]) == NATS_OK) {
                pending = meta->NumPending;
                jsMsgMetaData_Destroy(meta);
            }
            if (in.stream_seq > end_seq) {
                done = true; /* published after the call started */
                break;
            }
            st = fn(&in, ctx);
            if (st != CH_OK) {
                done = true;
                break;
            }
            delivered_last = in.stream_seq;
            if (in.stream_seq >= end_seq || pending == 0) {
                done = true;
            }
        }
        natsMsgList_Destroy(&list);
    }
cleanup:
    if (sub) {
        natsSubscription_Unsubscribe(sub);
        natsSubscription_Destroy(sub);
    }
    if (ci) {
        js_DeleteConsumer(b->js, stream, ci->Name, NULL, NULL);
        jsConsumerInfo_Destroy(ci);
    }
    if (last_seq_out) {
        *last_seq_out = delivered_last;
    }
    return st;
}
