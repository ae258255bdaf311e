// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* flowd's sockops program: tracks the TCP flows of one cgroup v2 subtree and
 * sends tcp_info-like records to user space over a ring buffer.
 *
 * On establishment a flow is checked against the optional filters; a flow
 * that passes gets per-socket storage and the callbacks it needs (state
 * changes, plus RTT in poll mode). A flow that does not pass costs that one
 * check and is never seen again. Flows whose callbacks an earlier instance
 * set (flowd restarted) are adopted on their next callback. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "flowd.h"

#define AF_INET 2
#define AF_INET6 10
#define TCP_CLOSE 7

/* tcp_get_info() semantics (include/uapi/linux/tcp.h, include/net/tcp.h). */
#define TCPI_OPT_TIMESTAMPS 1
#define TCPI_OPT_SACK 2
#define TCPI_OPT_WSCALE 4
#define TCPI_OPT_ECN 8
#define TCPI_OPT_ECN_SEEN 16
#define TCPI_OPT_SYN_DATA 32
#define TCPI_OPT_USEC_TS 64
#define TCPI_OPT_TFO_CHILD 128
/* tp->ecn_flags: bit 0 is TCP_ECN_OK (TCP_ECN_MODE_RFC3168 since AccECN),
 * bit 4 TCP_ECN_MODE_ACCECN (unused before it); bit 3 is TCP_ECN_SEEN. */
#define FLOWD_ECN_MODE_ANY 0x11
#define FLOWD_ECN_SEEN 0x08
#define TCP_CHRONO_BUSY 1
#define TCP_CHRONO_RWND_LIMITED 2
#define TCP_CHRONO_SNDBUF_LIMITED 3

#define MODE_POLL 0
#define MODE_TRANSITION 1

/* Set by user space at load time. */
const volatile __u8 mode = MODE_POLL;
const volatile __u64 interval_ns = 1000000000ULL; /* poll: min time between samples; 0 = every RTT */
/* Jiffies to µs and ms as include/linux/jiffies.h converts them for the
 * kernel's HZ: num/den is USEC_PER_SEC/HZ (MSEC_PER_SEC/HZ) in lowest terms.
 * den is 1 for every HZ that divides 1000 (100, 250, 1000), and the verifier
 * then removes the division: these fields are read-only constants. */
const volatile __u32 jiffy_usec_num = 4000, jiffy_usec_den = 1;
const volatile __u32 jiffy_msec_num = 4, jiffy_msec_den = 1;
const volatile __u32 usec_per_jiffy = 4000;	  /* USEC_PER_SEC / HZ, truncated */
const volatile __u8 filter_ports = 0;		  /* local_ports / remote_ports are set */
const volatile __u8 filter_cidrs = 0;		  /* remote_cidrs is set */
const volatile __u64 wakeup_bytes = 1 << 20;	  /* force a wakeup past this much unread data */
/* The tcp_info members to read when select_members is set: a bit per enum
 * flowd_field. Without select_members, every member. */
const volatile __u8 select_members = 0;
const volatile __u64 members[2] = {~0ULL, ~0ULL};
const volatile __u8 recent_bits = 16;		  /* recent has 2^recent_bits slots */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22); /* resized by user space */
} events SEC(".maps");

/* Records lost because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct flow_state {
	__u64 last_sample_ns;
	__u64 cgroup_id;		/* a socket never changes cgroup */
	__u64 ca_ops;			/* icsk_ca_ops when ca was read */
	char ca[FLOWD_CA_NAME_MAX];	/* its name */
};

/* Present for the flows flowd tracks. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_state);
} flows SEC(".maps");

/* When each flow was last sampled, so that the RTT callback's common case
 * (a flow whose interval has not passed) is decided without the flow's
 * storage, whose cache lines are cold on every callback: one word per
 * slot, the slot chosen by the low recent_bits bits of the socket cookie.
 * The word holds RECENT_VALID, the cookie's next RECENT_TAG_BITS bits and
 * the time of the flow's last sample in µs (CLOCK_MONOTONIC, tcp_mstamp's
 * clock) modulo 2^RECENT_TIME_BITS (12.7 days). A flow that finds another
 * flow's word in its slot, or none (a flow flowd adopted), goes the
 * storage's way, which decides. Only flows whose cookies agree in their
 * low recent_bits + RECENT_TAG_BITS bits (2^39 sockets apart) are taken
 * for each other, and then share one interval. */
#define RECENT_TIME_BITS 40
#define RECENT_TAG_BITS 23
#define RECENT_VALID (1ULL << 63)
#define RECENT_TIME_MASK ((1ULL << RECENT_TIME_BITS) - 1)
/* Intervals from this long on do not fit the word's time. */
#define RECENT_MAX_INTERVAL_NS ((1ULL << RECENT_TIME_BITS) * 1000)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized by user space: 2^recent_bits */
	__type(key, __u32);
	__type(value, __u64);
} recent SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* resized by user space */
	__type(key, __u16);
	__type(value, __u8);
} local_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u16);
	__type(value, __u8);
} remote_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct flowd_cidr_key);
	__type(value, __u8);
} remote_cidrs SEC(".maps");

/* Keep the record types in BTF for bpf2go -type. */
const struct flowd_record *unused_record __attribute__((unused));
const struct flowd_cidr_key *unused_cidr_key __attribute__((unused));
const enum flowd_event *unused_event __attribute__((unused));
const enum flowd_field *unused_field __attribute__((unused));

/* In fill_info(): mark member f present, in registers until the end. */
#define PRESENT(f) (present[(f) / 64] |= 1ULL << ((f) % 64))

/* In fill_info(): whether member f is to be read. Always when not
 * selective (the compiler drops the test); otherwise its bit in members,
 * read once: the verifier knows the read-only constant and removes the
 * code of the members not asked for. */
#define WANT(f) (!selective || ((want[(f) / 64] >> ((f) % 64)) & 1))

/* In fill_info(): i->member = expr, and mark it present, when f is wanted. */
#define PUT(f, member, expr)                 \
	do {                                 \
		if (WANT(f)) {               \
			i->member = (expr);  \
			PRESENT(f);          \
		}                            \
	} while (0)

/* jiffies_to_usecs(): rounds down. */
static __always_inline __u32 jiffies_to_usecs(__u64 j)
{
	__u64 v = j * jiffy_usec_num;

	if (jiffy_usec_den != 1)
		v /= jiffy_usec_den;
	return v;
}

/* jiffies_to_msecs(): rounds up. */
static __always_inline __u32 jiffies_to_msecs(__u64 j)
{
	__u64 v = j * jiffy_msec_num;

	if (jiffy_msec_den != 1)
		v = (v + jiffy_msec_den - 1) / jiffy_msec_den;
	return v;
}

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&drops, &zero);

	if (n)
		*n += 1;
}

/* The flow's remote address as an LPM key (IPv4 mapped into IPv6). */
static __always_inline void remote_key(const struct sock_common *skc, struct flowd_cidr_key *k)
{
	k->prefixlen = 128;
	if (skc->skc_family == AF_INET) {
		__builtin_memset(k->addr, 0, 10);
		k->addr[10] = 0xff;
		k->addr[11] = 0xff;
		__u32 a = skc->skc_daddr;
		__builtin_memcpy(&k->addr[12], &a, 4);
	} else {
		struct in6_addr a = skc->skc_v6_daddr;
		__builtin_memcpy(k->addr, &a, 16);
	}
}

static __always_inline bool flow_matches(const struct sock_common *skc)
{
	if (filter_ports) {
		__u16 lport = skc->skc_num;
		__u16 rport = bpf_ntohs(skc->skc_dport);

		if (!bpf_map_lookup_elem(&local_ports, &lport) &&
		    !bpf_map_lookup_elem(&remote_ports, &rport))
			return false;
	}
	if (filter_cidrs) {
		struct flowd_cidr_key k;

		remote_key(skc, &k);
		if (!bpf_map_lookup_elem(&remote_cidrs, &k))
			return false;
	}
	return true;
}

/* Fills r->info and r->present like tcp_get_info() fills struct tcp_info:
 * every member, or when selective the members user space asked for
 * (members). Members whose tcp_sock fields this kernel lacks stay absent.
 * selective is a compile-time constant at each call. */
static __always_inline void fill_info(struct flowd_record *r, const struct tcp_sock *tp, __u8 state, __u64 now_ns,
				      const bool selective)
{
	const struct inet_connection_sock *icsk = &tp->inet_conn;
	const struct sock *sk = &icsk->icsk_inet.sk;
	struct flowd_tcp_info *i = &r->info;
	__u32 now = (__u32)bpf_jiffies64(); /* tcp_jiffies32 */
	const __u64 want[2] = {members[0], members[1]};
	__u64 present[2] = {0, 0};

	PUT(FLOWD_F_STATE, state, state);
	PUT(FLOWD_F_PACING_RATE, pacing_rate, sk->sk_pacing_rate);
	PUT(FLOWD_F_MAX_PACING_RATE, max_pacing_rate, sk->sk_max_pacing_rate);
	PUT(FLOWD_F_REORDERING, reordering, tp->reordering);
	PUT(FLOWD_F_SND_CWND, snd_cwnd, tp->snd_cwnd);

	PUT(FLOWD_F_CA_STATE, ca_state, BPF_CORE_READ_BITFIELD(tp, inet_conn.icsk_ca_state));
	PUT(FLOWD_F_RETRANSMITS, retransmits, icsk->icsk_retransmits);
	PUT(FLOWD_F_PROBES, probes, icsk->icsk_probes_out);
	PUT(FLOWD_F_BACKOFF, backoff, icsk->icsk_backoff);

	/* Bitfields are read relative to the outermost struct: CO-RE computes
	 * their offsets from the root of the access chain. tp is a BTF pointer,
	 * so they are direct loads, not bpf_probe_read_kernel calls. */
	if (WANT(FLOWD_F_OPTIONS)) {
		__u8 opts = 0;
		if (BPF_CORE_READ_BITFIELD(tp, rx_opt.tstamp_ok))
			opts |= TCPI_OPT_TIMESTAMPS;
		if (BPF_CORE_READ_BITFIELD(tp, rx_opt.sack_ok))
			opts |= TCPI_OPT_SACK;
		if (BPF_CORE_READ_BITFIELD(tp, rx_opt.wscale_ok))
			opts |= TCPI_OPT_WSCALE;
		__u8 ecn = tp->ecn_flags;
		if (ecn & FLOWD_ECN_MODE_ANY)
			opts |= TCPI_OPT_ECN;
		if (ecn & FLOWD_ECN_SEEN)
			opts |= TCPI_OPT_ECN_SEEN;
		if (BPF_CORE_READ_BITFIELD(tp, syn_data_acked))
			opts |= TCPI_OPT_SYN_DATA;
		if (bpf_core_field_exists(tp->tcp_usec_ts) && BPF_CORE_READ_BITFIELD(tp, tcp_usec_ts))
			opts |= TCPI_OPT_USEC_TS;
		if (bpf_core_field_exists(tp->syn_fastopen_child) && BPF_CORE_READ_BITFIELD(tp, syn_fastopen_child))
			opts |= TCPI_OPT_TFO_CHILD;
		i->options = opts;
		PRESENT(FLOWD_F_OPTIONS);
	}
	/* Window scales are 0 without the option, as in tcp_get_info(). */
	if (WANT(FLOWD_F_SND_WSCALE) || WANT(FLOWD_F_RCV_WSCALE)) {
		bool wscale = BPF_CORE_READ_BITFIELD(tp, rx_opt.wscale_ok);
		PUT(FLOWD_F_SND_WSCALE, snd_wscale, wscale ? BPF_CORE_READ_BITFIELD(tp, rx_opt.snd_wscale) : 0);
		PUT(FLOWD_F_RCV_WSCALE, rcv_wscale, wscale ? BPF_CORE_READ_BITFIELD(tp, rx_opt.rcv_wscale) : 0);
	}

	PUT(FLOWD_F_RTO, rto, jiffies_to_usecs(icsk->icsk_rto));
	if (WANT(FLOWD_F_ATO)) {
		__u32 ato = BPF_CORE_READ_BITFIELD(tp, inet_conn.icsk_ack.ato);
		if (bpf_core_field_exists(icsk->icsk_delack_max)) {
			/* min(ato, tcp_delack_max(sk)); the route's locked
			 * RTAX_RTO_MIN metric, which tcp_rto_min() also honours,
			 * is not looked at. */
			__u32 delack_max = icsk->icsk_delack_max;
			__u32 rto_min = icsk->icsk_rto_min;
			__u32 from_rto_min = (rto_min > 2 ? rto_min : 2) - 1;

			if (from_rto_min < delack_max)
				delack_max = from_rto_min;
			if (delack_max < ato)
				ato = delack_max;
		}
		i->ato = jiffies_to_usecs(ato);
		PRESENT(FLOWD_F_ATO);
	}
	PUT(FLOWD_F_SND_MSS, snd_mss, tp->mss_cache);
	PUT(FLOWD_F_RCV_MSS, rcv_mss, icsk->icsk_ack.rcv_mss);

	PUT(FLOWD_F_UNACKED, unacked, tp->packets_out);
	PUT(FLOWD_F_SACKED, sacked, tp->sacked_out);
	PUT(FLOWD_F_LOST, lost, tp->lost_out);
	PUT(FLOWD_F_RETRANS, retrans, tp->retrans_out);

	PUT(FLOWD_F_LAST_DATA_SENT, last_data_sent, jiffies_to_msecs((__u32)(now - tp->lsndtime)));
	PUT(FLOWD_F_LAST_DATA_RECV, last_data_recv, jiffies_to_msecs((__u32)(now - icsk->icsk_ack.lrcvtime)));
	PUT(FLOWD_F_LAST_ACK_RECV, last_ack_recv, jiffies_to_msecs((__u32)(now - tp->rcv_tstamp)));

	PUT(FLOWD_F_PMTU, pmtu, icsk->icsk_pmtu_cookie);
	PUT(FLOWD_F_RCV_SSTHRESH, rcv_ssthresh, tp->rcv_ssthresh);
	PUT(FLOWD_F_RTT, rtt, tp->srtt_us >> 3);
	PUT(FLOWD_F_RTTVAR, rttvar, tp->mdev_us >> 2);
	PUT(FLOWD_F_SND_SSTHRESH, snd_ssthresh, tp->snd_ssthresh);
	PUT(FLOWD_F_ADVMSS, advmss, tp->advmss);
	PUT(FLOWD_F_RCV_RTT, rcv_rtt, tp->rcv_rtt_est.rtt_us >> 3);
	PUT(FLOWD_F_RCV_SPACE, rcv_space, tp->rcvq_space.space);
	PUT(FLOWD_F_TOTAL_RETRANS, total_retrans, tp->total_retrans);

	PUT(FLOWD_F_BYTES_ACKED, bytes_acked, tp->bytes_acked);
	PUT(FLOWD_F_BYTES_RECEIVED, bytes_received, tp->bytes_received);
	if (WANT(FLOWD_F_NOTSENT_BYTES)) {
		int notsent = (int)(tp->write_seq - tp->snd_nxt);
		i->notsent_bytes = notsent > 0 ? notsent : 0;
		PRESENT(FLOWD_F_NOTSENT_BYTES);
	}

	/* tcp_get_info_chrono_stats() */
	if (WANT(FLOWD_F_BUSY_TIME) || WANT(FLOWD_F_RWND_LIMITED) || WANT(FLOWD_F_SNDBUF_LIMITED)) {
		__u8 chrono_type = tp->chrono_type;
		__u32 chrono_start = tp->chrono_start;
		__u64 busy = tp->chrono_stat[0], rwnd = tp->chrono_stat[1], sndbuf = tp->chrono_stat[2];
		if (chrono_type == TCP_CHRONO_BUSY)
			busy += (__u32)(now - chrono_start);
		else if (chrono_type == TCP_CHRONO_RWND_LIMITED)
			rwnd += (__u32)(now - chrono_start);
		else if (chrono_type == TCP_CHRONO_SNDBUF_LIMITED)
			sndbuf += (__u32)(now - chrono_start);
		busy *= usec_per_jiffy;
		rwnd *= usec_per_jiffy;
		sndbuf *= usec_per_jiffy;
		PUT(FLOWD_F_BUSY_TIME, busy_time, busy + rwnd + sndbuf);
		PUT(FLOWD_F_RWND_LIMITED, rwnd_limited, rwnd);
		PUT(FLOWD_F_SNDBUF_LIMITED, sndbuf_limited, sndbuf);
	}

	PUT(FLOWD_F_SEGS_OUT, segs_out, tp->segs_out);
	PUT(FLOWD_F_SEGS_IN, segs_in, tp->segs_in);
	PUT(FLOWD_F_DATA_SEGS_IN, data_segs_in, tp->data_segs_in);
	PUT(FLOWD_F_DATA_SEGS_OUT, data_segs_out, tp->data_segs_out);
	PUT(FLOWD_F_MIN_RTT, min_rtt, tp->rtt_min.s[0].v);

	PUT(FLOWD_F_DELIVERY_RATE_APP_LIMITED, delivery_rate_app_limited,
	    BPF_CORE_READ_BITFIELD(tp, rate_app_limited) ? 1 : 0);
	if (WANT(FLOWD_F_DELIVERY_RATE)) {
		__u32 rate = tp->rate_delivered, intv = tp->rate_interval_us;
		__u64 v = 0;
		if (rate && intv)
			v = (__u64)rate * tp->mss_cache * 1000000 / intv;
		i->delivery_rate = v;
		PRESENT(FLOWD_F_DELIVERY_RATE);
	}
	PUT(FLOWD_F_DELIVERED, delivered, tp->delivered);

	if (bpf_core_field_exists(tp->delivered_ce))
		PUT(FLOWD_F_DELIVERED_CE, delivered_ce, tp->delivered_ce);
	if (bpf_core_field_exists(tp->bytes_sent))
		PUT(FLOWD_F_BYTES_SENT, bytes_sent, tp->bytes_sent);
	if (bpf_core_field_exists(tp->bytes_retrans))
		PUT(FLOWD_F_BYTES_RETRANS, bytes_retrans, tp->bytes_retrans);
	if (bpf_core_field_exists(tp->dsack_dups))
		PUT(FLOWD_F_DSACK_DUPS, dsack_dups, tp->dsack_dups);
	if (bpf_core_field_exists(tp->reord_seen))
		PUT(FLOWD_F_REORD_SEEN, reord_seen, tp->reord_seen);
	if (bpf_core_field_exists(tp->rcv_ooopack))
		PUT(FLOWD_F_RCV_OOOPACK, rcv_ooopack, tp->rcv_ooopack);
	PUT(FLOWD_F_SND_WND, snd_wnd, tp->snd_wnd);
	PUT(FLOWD_F_RCV_WND, rcv_wnd, tp->rcv_wnd);
	if (bpf_core_field_exists(tp->plb_rehash) && bpf_core_field_exists(tp->timeout_rehash))
		PUT(FLOWD_F_REHASH, rehash, tp->plb_rehash + tp->timeout_rehash);
	if (bpf_core_field_exists(tp->fastopen_client_fail))
		PUT(FLOWD_F_FASTOPEN_CLIENT_FAIL, fastopen_client_fail, BPF_CORE_READ_BITFIELD(tp, fastopen_client_fail));
	if (bpf_core_field_exists(tp->total_rto) && bpf_core_field_exists(tp->rto_stamp)) {
		PUT(FLOWD_F_TOTAL_RTO, total_rto, tp->total_rto);
		PUT(FLOWD_F_TOTAL_RTO_RECOVERIES, total_rto_recoveries, tp->total_rto_recoveries);
		if (WANT(FLOWD_F_TOTAL_RTO_TIME)) {
			__u32 rto_time = tp->total_rto_time;
			__u32 rto_stamp = tp->rto_stamp;
			if (rto_stamp)
				rto_time += (__u32)(now_ns / 1000000) - rto_stamp; /* tcp_clock_ms() */
			i->total_rto_time = rto_time;
			PRESENT(FLOWD_F_TOTAL_RTO_TIME);
		}
	}
	if (bpf_core_field_exists(tp->received_ce) && bpf_core_field_exists(tp->delivered_ecn_bytes) &&
	    bpf_core_field_exists(tp->received_ecn_bytes)) {
		/* index = INET_ECN_ECT_1 - 1, INET_ECN_ECT_0 - 1, INET_ECN_CE - 1 */
		PUT(FLOWD_F_RECEIVED_CE, received_ce, tp->received_ce);
		PUT(FLOWD_F_DELIVERED_E1_BYTES, delivered_e1_bytes, tp->delivered_ecn_bytes[0]);
		PUT(FLOWD_F_DELIVERED_E0_BYTES, delivered_e0_bytes, tp->delivered_ecn_bytes[1]);
		PUT(FLOWD_F_DELIVERED_CE_BYTES, delivered_ce_bytes, tp->delivered_ecn_bytes[2]);
		PUT(FLOWD_F_RECEIVED_E1_BYTES, received_e1_bytes, tp->received_ecn_bytes[0]);
		PUT(FLOWD_F_RECEIVED_E0_BYTES, received_e0_bytes, tp->received_ecn_bytes[1]);
		PUT(FLOWD_F_RECEIVED_CE_BYTES, received_ce_bytes, tp->received_ecn_bytes[2]);
	}
	r->present[0] = present[0];
	r->present[1] = present[1];
}

static __always_inline __u64 socket_cgroup_id(const struct sock *sk)
{
	if (!bpf_core_field_exists(sk->sk_cgrp_data.cgroup))
		return 0;
	struct cgroup *cg = sk->sk_cgrp_data.cgroup;
	if (!cg)
		return 0;
	return BPF_CORE_READ(cg, kn, id);
}

static __always_inline void emit(struct bpf_sock_ops *skops, const struct tcp_sock *tp, struct flow_state *st,
				 __u8 event, __u8 old_state, __u8 new_state, __u64 now_ns)
{
	const struct sock *sk = &tp->inet_conn.icsk_inet.sk;
	const struct sock_common *skc = &sk->__sk_common;
	struct flowd_record *r;

	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_drop();
		return;
	}
	/* Ring buffer memory is not zeroed: clear it so that nothing stale
	 * (or absent) reaches user space. */
	__builtin_memset(r, 0, sizeof(*r));

	r->timestamp_ns = now_ns;
	r->cookie = bpf_get_socket_cookie(skops);
	/* The cgroup id and the congestion control's name are read once per
	 * flow (and the name again when the flow's congestion control changes),
	 * and kept in its storage. */
	if (!st->cgroup_id)
		st->cgroup_id = socket_cgroup_id(sk);
	r->cgroup_id = st->cgroup_id;
	r->event = event;
	r->old_state = old_state;
	r->new_state = new_state;
	r->family = skc->skc_family;
	r->lport = skc->skc_num;
	r->rport = bpf_ntohs(skc->skc_dport);
	if (r->family == AF_INET) {
		__u32 l = skc->skc_rcv_saddr, d = skc->skc_daddr;
		__builtin_memcpy(r->laddr, &l, 4);
		__builtin_memcpy(r->raddr, &d, 4);
	} else {
		struct in6_addr l = skc->skc_v6_rcv_saddr, d = skc->skc_v6_daddr;
		__builtin_memcpy(r->laddr, &l, 16);
		__builtin_memcpy(r->raddr, &d, 16);
	}
	const struct tcp_congestion_ops *ops = tp->inet_conn.icsk_ca_ops;
	if ((__u64)ops != st->ca_ops) {
		bpf_probe_read_kernel_str(st->ca, sizeof(st->ca), ops->name);
		st->ca_ops = (__u64)ops;
	}
	__builtin_memcpy(r->ca, st->ca, sizeof(r->ca));

	/* The verifier keeps one of the two. */
	if (select_members)
		fill_info(r, tp, new_state, now_ns, true);
	else
		fill_info(r, tp, new_state, now_ns, false);

	/* Batch wakeups: user space drains on a timer; wake it early only when
	 * the unread data passes the watermark. */
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(r, flags);
}

/* Whether the RTT callback keeps its flows' last samples in recent. */
static __always_inline bool uses_recent(void)
{
	return mode == MODE_POLL && interval_ns && interval_ns < RECENT_MAX_INTERVAL_NS;
}

static __always_inline __u64 *recent_slot(__u64 cookie)
{
	__u32 k = cookie & ((1U << recent_bits) - 1);

	return bpf_map_lookup_elem(&recent, &k);
}

static __always_inline __u64 recent_tag(__u64 cookie)
{
	return RECENT_VALID | ((cookie >> recent_bits) & ((1ULL << RECENT_TAG_BITS) - 1)) << RECENT_TIME_BITS;
}

/* Whether the flow's word says its last sample was less than interval_ns
 * before now_us (the ACK's tcp_mstamp). A word from a later clock read
 * than now_us reads as long past: the storage decides then. */
static __always_inline bool sampled_recently(__u64 cookie, __u64 now_us)
{
	__u64 *slot = recent_slot(cookie);
	__u64 v;

	if (!slot)
		return false;
	v = *slot;
	return (v & ~RECENT_TIME_MASK) == recent_tag(cookie) && ((now_us - v) & RECENT_TIME_MASK) * 1000 < interval_ns;
}

/* Makes the flow's word say it was sampled at sample_us (µs, tcp_mstamp's
 * clock). */
static __always_inline void remember_sample(__u64 cookie, __u64 sample_us)
{
	__u64 *slot;

	if (!uses_recent())
		return;
	slot = recent_slot(cookie);
	if (slot)
		*slot = recent_tag(cookie) | (sample_us & RECENT_TIME_MASK);
}

static __always_inline int wanted_cb_flags(void)
{
	return mode == MODE_POLL ? BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG : BPF_SOCK_OPS_STATE_CB_FLAG;
}

/* Starts tracking a flow that passes the filters: storage, callbacks and
 * an open record. Returns its state, or NULL when it is not tracked.
 * Callback flags are only ever added: other sockops programs on this cgroup
 * or its ancestors (another flowd, say) may rely on the ones already set. */
static __always_inline struct flow_state *track(struct bpf_sock_ops *skops, struct bpf_sock *bsk,
						  const struct tcp_sock *tp, __u8 state, __u64 now)
{
	const struct sock_common *skc = &tp->inet_conn.icsk_inet.sk.__sk_common;
	struct flow_state *st;
	int cb;

	if (!flow_matches(skc))
		return NULL;
	st = bpf_sk_storage_get(&flows, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return NULL;
	cb = skops->bpf_sock_ops_cb_flags | wanted_cb_flags();
	if (cb != skops->bpf_sock_ops_cb_flags)
		bpf_sock_ops_cb_flags_set(skops, cb);
	st->last_sample_ns = now;
	emit(skops, tp, st, FLOWD_EVENT_OPEN, 0, state, now);
	remember_sample(bpf_get_socket_cookie(skops), now / 1000);
	return st;
}

/* The state of a tracked flow. A flow that has callbacks but no storage was
 * set up by an earlier instance of this program (flowd restarted) or by
 * another program: it is adopted if it passes the filters. */
static __always_inline struct flow_state *lookup(struct bpf_sock_ops *skops, struct bpf_sock *bsk,
						   const struct tcp_sock *tp, __u8 state, __u64 now, bool *adopted)
{
	struct flow_state *st = bpf_sk_storage_get(&flows, bsk, 0, 0);

	*adopted = false;
	if (st)
		return st;
	st = track(skops, bsk, tp, state, now);
	*adopted = st != NULL;
	return st;
}

/* Runs on every RTT callback of every tracked flow, so the common case (a
 * tracked flow whose interval has not passed) is decided before anything
 * else: from the flow's word in recent and the socket's own clock, without
 * its storage or a clock read. tcp_mstamp is tcp_clock_us(),
 * CLOCK_MONOTONIC in µs, which the kernel refreshed for the ACK being
 * processed: the same clock as bpf_ktime_get_ns(). */
static __always_inline void on_rtt(struct bpf_sock_ops *skops, struct bpf_sock *bsk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(bsk);
	struct flow_state *st;
	__u64 cookie = 0, now;
	__u8 state;

	if (!tp)
		return;
	if (uses_recent()) {
		cookie = bpf_get_socket_cookie(skops);
		if (sampled_recently(cookie, tp->tcp_mstamp))
			return;
	}
	st = bpf_sk_storage_get(&flows, bsk, 0, 0);
	/* Signed: the last sample's clock read may be later than this ACK's
	 * tcp_mstamp, which is truncated to the µs. */
	if (st && interval_ns && (__s64)(tp->tcp_mstamp * 1000 - st->last_sample_ns) < (__s64)interval_ns) {
		/* The word did not say so (another flow's, none yet, or a
		 * clock read later than this ACK): make it the flow's. */
		remember_sample(cookie, st->last_sample_ns / 1000);
		return;
	}
	now = bpf_ktime_get_ns();
	state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	if (!st) {
		track(skops, bsk, tp, state, now); /* adopt: the open record for now */
		return;
	}
	st->last_sample_ns = now;
	emit(skops, tp, st, FLOWD_EVENT_SAMPLE, 0, state, now);
	remember_sample(cookie, now / 1000);
}

static __always_inline void on_state(struct bpf_sock_ops *skops, struct bpf_sock *bsk, const struct tcp_sock *tp)
{
	__u8 old_state = skops->args[0], new_state = skops->args[1];
	__u64 now = bpf_ktime_get_ns();
	struct flow_state *st;
	bool adopted;

	st = lookup(skops, bsk, tp, old_state, now, &adopted);
	if (!st)
		return;
	/* The callback runs before the kernel stores the new state. */
	emit(skops, tp, st, FLOWD_EVENT_STATE, old_state, new_state, now);
	if (new_state == TCP_CLOSE) {
		emit(skops, tp, st, FLOWD_EVENT_CLOSE, old_state, new_state, now);
		bpf_sk_storage_delete(&flows, bsk);
	}
}

SEC("sockops")
int flowd_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *bsk;
	struct tcp_sock *tp;
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_RTT_CB && op != BPF_SOCK_OPS_STATE_CB)
		return 1;
	bsk = skops->sk;
	if (!bsk)
		return 1;
	if (op == BPF_SOCK_OPS_RTT_CB) {
		/* Another program may have asked for RTT callbacks. */
		if (mode == MODE_POLL)
			on_rtt(skops, bsk);
		return 1;
	}
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;

	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		track(skops, bsk, tp, tp->inet_conn.icsk_inet.sk.__sk_common.skc_state, bpf_ktime_get_ns());
		break;
	case BPF_SOCK_OPS_STATE_CB:
		on_state(skops, bsk, tp);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
