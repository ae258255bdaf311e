// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* flowd's BPF programs: they track the TCP flows of one cgroup v2 subtree and
 * send tcp_info-like records to user space over a ring buffer.
 *
 * - flowd_sockops (sockops, on the cgroup): on establishment a flow is
 *   checked against the optional filters; a flow that passes gets a slot
 *   in slots (found from the socket through its storage in flows), the
 *   state-change callback (and at interval 0 the RTT callback) and an open
 *   record. A flow that does not pass costs that one check and is never
 *   seen again. On connect() it notes the connecting process, which the
 *   flow's records then name.
 * - flowd_sample (syscall, run by user space once per interval): walks the
 *   used slots; a flow whose segment counters moved since its last record
 *   with tcp_info, or that has been idle for idle_interval, gets a sample. Its cost
 *   follows the tracked flows, not the traffic or the host's sockets.
 * - flowd_existing (iter/tcp): run once per network namespace at start, it
 *   tracks the established flows of the subtree that began before flowd.
 * - flowd_set_state (tp_btf/inet_sock_set_state): state changes of the
 *   flows flowd_existing found but could not give callbacks to (kernels
 *   before 6.12). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#include "flowd.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOL_TCP 6
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_TIME_WAIT 6
#define TCP_CLOSE 7
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12

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

#define PF_KTHREAD 0x00200000 /* task_struct.flags: a kernel thread (include/linux/sched.h) */

/* Set by user space at load time. */
const volatile __u8 mode = MODE_POLL;
const volatile __u64 interval_ns = 1000000000ULL; /* poll: time between walks; 0 = a sample on every RTT callback */
const volatile __u64 idle_interval_ns = 0;	   /* poll: a sample of an idle flow this long after its last record; 0 = never */
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
const volatile __u8 all_cgroups = 0;		  /* the cgroup is the root: flowd_existing needs no subtree lookup */
const volatile __u32 max_flows = 1;		  /* slots' size */
/* Name the process that connects a flow: set when flowd runs in the
 * initial PID namespace, whose numbers task->tgid holds, and sockops
 * programs may call bpf_get_current_task_btf (probed by user space). */
const volatile __u8 process_ids = 0;

/* Slots ever used (free_slots holds those freed since). */
__u32 slots_used = 0;
/* Where a walk that flowd_sample stopped for the ring buffer goes on. */
__u32 walk_next = 0;
/* Read by user space: flows not tracked because every slot was in use. */
__u64 untracked_flows = 0;
/* Set by flowd_existing, read by user space: the flows it found, and how
 * many of them flowd_set_state must follow (decremented as they close). */
__u64 existing_flows = 0;
__u64 existing_without_callbacks = 0;

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

/* flow_state.flags */
#define FLOW_OPEN_PENDING 1 /* passive, not yet ESTABLISHED: its open record waits */
#define FLOW_NO_CALLBACKS 2 /* found running without callbacks: flowd_set_state follows it */

/* A tracked flow: one slot of slots. */
struct flow_state {
	__u64 sk;			/* its struct tcp_sock; 0: the slot is free */
	__u64 cookie;			/* its socket cookie: the walk checks sk against it */
	__u64 cgroup_id;		/* a socket never changes cgroup */
	__u64 ca_ops;			/* icsk_ca_ops when ca was read */
	__u64 last_record_ns;		/* when the flow's last record with tcp_info was taken */
	char ca[FLOWD_CA_NAME_MAX];	/* its congestion control's name */
	char comm[FLOWD_COMM_MAX];	/* the name of the process that connected it */
	__u32 segs_in;			/* tcp_sock's counters at that record */
	__u32 segs_out;
	__u32 slot;			/* this slot's index */
	__u32 pid;			/* the process that connected it; 0: unknown */
	/* Its ports, host order: a socket whose port the kernel chose loses
	 * it (inet_put_port) before the tracepoint reports its close. */
	__u16 lport;
	__u16 rport;
	__u8 flags;			/* FLOW_* */
	__u8 _pad[3];
};

/* The tracked flows, in slots 0 to slots_used - 1; a freed slot goes to
 * free_slots and is used again. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized by user space: max_flows */
	__type(key, __u32);
	__type(value, struct flow_state);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_QUEUE);
	__uint(max_entries, 1); /* resized by user space: max_flows */
	__uint(value_size, sizeof(__u32));
} free_slots SEC(".maps");

/* A socket's storage: the slot of a tracked flow and, from connect() on,
 * the process that connected it, which its slot takes over. */
struct flow_ref {
	__u32 slot;
	__u32 pid;			/* 0: unknown */
	char comm[FLOWD_COMM_MAX];
	__u8 tracked;			/* slot is the flow's */
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct flow_ref);
} flows SEC(".maps");

/* The walk's copy of one socket. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, 8); /* resized by user space: this kernel's sizeof(struct tcp_sock) */
} copies SEC(".maps");

/* The cgroup ids of the subtree when flowd started, for flowd_existing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* resized by user space */
	__type(key, __u64);
	__type(value, __u8);
} subtree SEC(".maps");

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
const struct flowd_head *unused_head __attribute__((unused));
const struct flowd_cidr_key *unused_cidr_key __attribute__((unused));
const enum flowd_event *unused_event __attribute__((unused));
const enum flowd_field *unused_field __attribute__((unused));
const enum flowd_record_flag *unused_record_flag __attribute__((unused));

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

/* The slot of a tracked socket (sk as the calling program has it: a
 * struct bpf_sock or a struct sock), or NULL. */
static __always_inline struct flow_state *flow_of(void *sk)
{
	struct flow_ref *ref = bpf_sk_storage_get(&flows, sk, 0, 0);

	return ref && ref->tracked ? bpf_map_lookup_elem(&slots, &ref->slot) : NULL;
}

/* Gives the socket sk (tp) a slot, or returns NULL when it has one already
 * or none is free (counted in untracked_flows). The slot is filled before
 * the walk can take it for a flow's: sk last. */
static __always_inline struct flow_state *new_flow(void *sk, const struct tcp_sock *tp, __u64 cookie,
						     __u64 cgroup_id)
{
	struct flow_state *st;
	struct flow_ref *ref;
	__u32 slot;

	ref = bpf_sk_storage_get(&flows, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ref || ref->tracked)
		return NULL;
	if (bpf_map_pop_elem(&free_slots, &slot)) {
		slot = slots_used < max_flows ? __sync_fetch_and_add(&slots_used, 1) : max_flows;
		if (slot >= max_flows) {
			__sync_fetch_and_add(&untracked_flows, 1);
			bpf_sk_storage_delete(&flows, sk);
			return NULL;
		}
	}
	st = bpf_map_lookup_elem(&slots, &slot);
	if (!st) {
		bpf_sk_storage_delete(&flows, sk);
		return NULL;
	}
	__builtin_memset(st, 0, sizeof(*st));
	st->slot = slot;
	st->cookie = cookie;
	st->cgroup_id = cgroup_id;
	st->pid = ref->pid;
	__builtin_memcpy(st->comm, ref->comm, sizeof(st->comm));
	st->lport = tp->inet_conn.icsk_inet.sk.__sk_common.skc_num;
	st->rport = bpf_ntohs(tp->inet_conn.icsk_inet.sk.__sk_common.skc_dport);
	st->sk = (__u64)tp;
	ref->slot = slot;
	ref->tracked = 1;
	return st;
}

/* Stops tracking the socket sk: its storage goes, and its slot is free. */
static __always_inline void forget(void *sk, struct flow_state *st)
{
	__u32 slot = st->slot;

	st->sk = 0;
	st->cookie = 0;
	bpf_sk_storage_delete(&flows, sk);
	bpf_map_push_elem(&free_slots, &slot, 0);
}

/* Fills the head of a record of the flow: tp is the socket, or the walk's
 * copy of it; the ports are the slot's. */
static __always_inline void fill_head(struct flowd_head *h, const struct tcp_sock *tp, struct flow_state *st,
				      __u8 event, __u8 old_state, __u8 new_state, __u8 flags, __u64 now_ns)
{
	const struct sock_common *skc = &tp->inet_conn.icsk_inet.sk.__sk_common;

	h->timestamp_ns = now_ns;
	h->cookie = st->cookie;
	h->cgroup_id = st->cgroup_id;
	h->event = event;
	h->old_state = old_state;
	h->new_state = new_state;
	h->flags = flags;
	h->family = skc->skc_family;
	h->lport = st->lport;
	h->rport = st->rport;
	if (h->family == AF_INET) {
		__u32 l = skc->skc_rcv_saddr, d = skc->skc_daddr;
		__builtin_memcpy(h->laddr, &l, 4);
		__builtin_memcpy(h->raddr, &d, 4);
	} else {
		struct in6_addr l = skc->skc_v6_rcv_saddr, d = skc->skc_v6_daddr;
		__builtin_memcpy(h->laddr, &l, 16);
		__builtin_memcpy(h->raddr, &d, 16);
	}
	/* The congestion control's name is read again only when the flow's
	 * congestion control changes. */
	const struct tcp_congestion_ops *ops = tp->inet_conn.icsk_ca_ops;
	if ((__u64)ops != st->ca_ops) {
		bpf_probe_read_kernel_str(st->ca, sizeof(st->ca), ops->name);
		st->ca_ops = (__u64)ops;
	}
	__builtin_memcpy(h->ca, st->ca, sizeof(h->ca));
	h->pid = st->pid;
	__builtin_memcpy(h->comm, st->comm, sizeof(h->comm));
}

/* Submits a reserved record. Batch wakeups: user space drains on a timer;
 * wake it early only when the unread data passes the watermark. */
static __always_inline void submit(void *r)
{
	__u64 wake = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		wake = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(r, wake);
}

/* Sends one record of the flow with its tcp_info and notes, in its slot,
 * what the record saw: the walk compares the flow with it. tp is the
 * socket, or the walk's copy of it. */
static __always_inline void emit(const struct tcp_sock *tp, struct flow_state *st, __u8 event, __u8 old_state,
				 __u8 new_state, __u8 flags, __u64 now_ns)
{
	struct flowd_record *r;

	st->last_record_ns = now_ns;
	st->segs_in = tp->segs_in;
	st->segs_out = tp->segs_out;

	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_drop();
		return;
	}
	/* Ring buffer memory is not zeroed: clear it so that nothing stale
	 * (or absent) reaches user space. */
	__builtin_memset(r, 0, sizeof(*r));
	fill_head(&r->head, tp, st, event, old_state, new_state, flags, now_ns);

	/* The verifier keeps one of the two. */
	if (select_members)
		fill_info(r, tp, new_state, now_ns, true);
	else
		fill_info(r, tp, new_state, now_ns, false);
	submit(r);
}

/* Sends a state record. In poll mode it is the head alone, and the slot
 * keeps the counters of the flow's last record with tcp_info, so that the
 * walk samples a flow that moved before its state changed; in transition
 * mode, where no walk runs, it holds tcp_info like the other records. */
static __always_inline void emit_state(const struct tcp_sock *tp, struct flow_state *st, __u8 old_state,
				       __u8 new_state, __u64 now_ns)
{
	struct flowd_head *h;

	if (mode == MODE_TRANSITION) {
		emit(tp, st, FLOWD_EVENT_STATE, old_state, new_state, 0, now_ns);
		return;
	}
	h = bpf_ringbuf_reserve(&events, sizeof(*h), 0);
	if (!h) {
		count_drop();
		return;
	}
	__builtin_memset(h, 0, sizeof(*h));
	fill_head(h, tp, st, FLOWD_EVENT_STATE, old_state, new_state, 0, now_ns);
	submit(h);
}

/* Whether every RTT callback of a tracked flow sends a sample. */
static __always_inline bool rtt_samples(void)
{
	return mode == MODE_POLL && !interval_ns;
}

static __always_inline int wanted_cb_flags(void)
{
	return rtt_samples() ? BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG : BPF_SOCK_OPS_STATE_CB_FLAG;
}

/* Starts tracking a flow that passes the filters: a slot, callbacks and
 * an open record, which a passive flow still in SYN_RECV (the kernel runs
 * PASSIVE_ESTABLISHED_CB before it stores ESTABLISHED) sends on its change
 * to ESTABLISHED. existing: the flow was established before (adopted on a
 * callback the program did not ask for). Returns its slot, or NULL when it
 * is not tracked. Callback flags are only ever added: other sockops
 * programs on this cgroup or its ancestors (another flowd, say) may rely
 * on the ones already set. */
static __always_inline struct flow_state *track(struct bpf_sock_ops *skops, struct bpf_sock *bsk,
						  const struct tcp_sock *tp, __u8 state, __u64 now, bool existing)
{
	const struct sock_common *skc = &tp->inet_conn.icsk_inet.sk.__sk_common;
	struct flow_state *st;
	int cb;

	if (!flow_matches(skc))
		return NULL;
	st = new_flow(bsk, tp, bpf_get_socket_cookie(skops), socket_cgroup_id(&tp->inet_conn.icsk_inet.sk));
	if (!st)
		return NULL;
	cb = skops->bpf_sock_ops_cb_flags | wanted_cb_flags();
	if (cb != skops->bpf_sock_ops_cb_flags)
		bpf_sock_ops_cb_flags_set(skops, cb);
	if (state == TCP_SYN_RECV && !existing) {
		st->flags |= FLOW_OPEN_PENDING;
		return st;
	}
	emit(tp, st, FLOWD_EVENT_OPEN, 0, state, existing ? FLOWD_RECORD_EXISTING : 0, now);
	return st;
}

/* Reports a state change of a tracked flow: a state record, or for the
 * change to CLOSE a close record. sk is the socket as the calling program
 * has it, for forget() on CLOSE. The kernel calls the state callback and
 * the tracepoint before it stores the new state, also when the state does
 * not change (tcp_close() after shutdown()): those are not changes. */
static __always_inline void change_state(void *sk, const struct tcp_sock *tp, struct flow_state *st, __u8 old_state,
					 __u8 new_state, __u64 now)
{
	if (st->flags & FLOW_OPEN_PENDING) {
		st->flags &= ~FLOW_OPEN_PENDING;
		if (new_state == TCP_ESTABLISHED) {
			emit(tp, st, FLOWD_EVENT_OPEN, 0, new_state, 0, now);
			return;
		}
		emit(tp, st, FLOWD_EVENT_OPEN, 0, old_state, 0, now); /* never established */
	}
	if (new_state == old_state)
		return;
	if (new_state == TCP_CLOSE) {
		/* One record for the last change: the close record says which
		 * state the flow left. */
		emit(tp, st, FLOWD_EVENT_CLOSE, old_state, new_state, 0, now);
		forget(sk, st);
		return;
	}
	emit_state(tp, st, old_state, new_state, now);
}

static __always_inline void on_state(struct bpf_sock_ops *skops, struct bpf_sock *bsk, const struct tcp_sock *tp)
{
	__u8 old_state = skops->args[0], new_state = skops->args[1];
	__u64 now = bpf_ktime_get_ns();
	struct flow_state *st = flow_of(bsk);

	if (!st) {
		/* Callbacks without a slot: set up by an earlier instance of
		 * this program (flowd restarted) or by another program. */
		st = track(skops, bsk, tp, old_state, now, true);
		if (!st)
			return;
	} else if (st->flags & FLOW_NO_CALLBACKS) {
		return; /* another program set callbacks; flowd_set_state reports it */
	}
	change_state(bsk, tp, st, old_state, new_state, now);
}

/* Notes the process that connects a flow that passes the filters, for the
 * flow's records. TCP_CONNECT_CB runs in tcp_connect(), which connect()
 * (or the sendmsg() that starts a TCP Fast Open) calls in the process's
 * own context; the later callbacks may run in softirq context, where the
 * current task is whichever was interrupted. A kernel thread (an NFS
 * mount's, MPTCP's extra subflows) is no process: left unknown. */
static __always_inline void on_connect(struct bpf_sock *bsk, const struct tcp_sock *tp)
{
	struct task_struct *task;
	struct flow_ref *ref;

	if (!flow_matches(&tp->inet_conn.icsk_inet.sk.__sk_common))
		return;
	task = bpf_get_current_task_btf();
	if (task->flags & PF_KTHREAD)
		return;
	ref = bpf_sk_storage_get(&flows, bsk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!ref || ref->tracked)
		return;
	ref->pid = task->tgid;
	/* The process's name: its main thread's, as ps shows it. */
	bpf_probe_read_kernel_str(ref->comm, sizeof(ref->comm), task->group_leader->comm);
}

/* At interval 0: a sample on every RTT callback, which the kernel runs
 * when an ACK acknowledges new data. */
static __always_inline void on_rtt(struct bpf_sock_ops *skops, struct bpf_sock *bsk, const struct tcp_sock *tp)
{
	__u8 state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	__u64 now = bpf_ktime_get_ns();
	struct flow_state *st = flow_of(bsk);

	if (!st) {
		track(skops, bsk, tp, state, now, true); /* adopt: the open record for now */
		return;
	}
	if (!(st->flags & FLOW_OPEN_PENDING))
		emit(tp, st, FLOWD_EVENT_SAMPLE, 0, state, 0, now);
}

SEC("sockops")
int flowd_sockops(struct bpf_sock_ops *skops)
{
	struct bpf_sock *bsk;
	struct tcp_sock *tp;
	__u32 op = skops->op;

	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_STATE_CB && op != BPF_SOCK_OPS_RTT_CB && op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB && !process_ids)
		return 1;
	/* Another program (or an earlier flowd at interval 0) may have asked
	 * for RTT callbacks. */
	if (op == BPF_SOCK_OPS_RTT_CB && !rtt_samples())
		return 1;
	bsk = skops->sk;
	if (!bsk)
		return 1;
	tp = bpf_skc_to_tcp_sock(bsk);
	if (!tp)
		return 1;

	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_connect(bsk, tp);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		track(skops, bsk, tp, tp->inet_conn.icsk_inet.sk.__sk_common.skc_state, bpf_ktime_get_ns(), false);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		on_state(skops, bsk, tp);
		break;
	case BPF_SOCK_OPS_RTT_CB:
		on_rtt(skops, bsk, tp);
		break;
	}
	return 1;
}

/* One run of flowd_sample. */
struct walk {
	__u64 now;	/* when it started */
	bool more;	/* it stopped at walk_next */
};

/* The walk's step for one slot (bpf_for_each_map_elem: slots in index
 * order; returning 1 ends the run). The socket is read through its
 * address, as the kernel's own lockless lookups read TCP sockets (their
 * memory is only ever reused for another TCP socket, SLAB_TYPESAFE_BY_RCU):
 * what is read is the flow's only while its cookie is the flow's, which is
 * checked before a record is sent, in the copy and again after it. The
 * socket is not locked: members are read as they are, as between two
 * segments. A flow that did not move costs two reads, of the cache lines of
 * its segment counters. */
static long sample_slot(struct bpf_map *map, __u32 *slot, struct flow_state *st, struct walk *w)
{
	const struct tcp_sock *live, *copy;
	__u32 segs_in, segs_out, zero = 0;
	__u64 cookie;
	__u8 state;

	if (*slot >= slots_used)
		return 1;
	if (*slot < walk_next)
		return 0;
	live = (const struct tcp_sock *)st->sk;
	if (!live || (st->flags & FLOW_OPEN_PENDING))
		return 0;
	if (BPF_CORE_READ_INTO(&segs_in, live, segs_in) || BPF_CORE_READ_INTO(&segs_out, live, segs_out))
		return 0;
	if (segs_in == st->segs_in && segs_out == st->segs_out &&
	    (!idle_interval_ns || w->now - st->last_record_ns < idle_interval_ns))
		return 0;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes) {
		/* Half the ring buffer is unread: user space drains it and
		 * runs the walk again from here. */
		walk_next = *slot;
		w->more = true;
		return 1;
	}
	copy = bpf_map_lookup_elem(&copies, &zero);
	if (!copy || bpf_probe_read_kernel((void *)copy, bpf_core_type_size(struct tcp_sock), live))
		return 0;
	state = copy->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	if (copy->inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter != st->cookie || state == TCP_CLOSE ||
	    BPF_CORE_READ_INTO(&cookie, live, inet_conn.icsk_inet.sk.__sk_common.skc_cookie.counter) ||
	    cookie != st->cookie)
		return 0;
	emit(copy, st, FLOWD_EVENT_SAMPLE, 0, state, 0, bpf_ktime_get_ns());
	return 0;
}

/* Poll mode: run by user space every interval (every flush interval at
 * interval 0), and again as long as it returns 1 (it stopped once half the
 * ring buffer was unread). A flow whose segment counters changed since its
 * last record with tcp_info gets a sample, whether it sends, only receives
 * or both; one that did not gets one idle_interval after that record. */
SEC("syscall")
int flowd_sample(void *ctx)
{
	struct walk w = {.now = bpf_ktime_get_ns()};

	bpf_for_each_map_elem(&slots, sample_slot, &w, 0);
	if (!w.more)
		walk_next = 0;
	return w.more;
}

/* One byte of iterator output per record sent: user space reads a walk in
 * chunks of as many bytes as half the ring buffer has records, and drains
 * the ring buffer between them (the kernel ends a read() once it has that
 * much output). */
static __always_inline void note_record(struct seq_file *seq)
{
	static const char mark = 'r';

	bpf_seq_write(seq, (void *)&mark, 1);
}

/* States of a flow that has been established and is not gone. */
static __always_inline bool synchronized(__u8 state)
{
	return state != TCP_SYN_SENT && state != TCP_SYN_RECV && state != TCP_TIME_WAIT && state != TCP_CLOSE &&
	       state != TCP_LISTEN && state != TCP_NEW_SYN_RECV;
}

/* Run by user space once per network namespace at start, over every TCP
 * socket of the namespace (the kernel holds each socket's lock): tracks the
 * flows of the subtree that are established, or closing, and not tracked
 * yet, with an open record that says they existed. Their callbacks are set
 * with bpf_setsockopt(TCP_BPF_SOCK_OPS_CB_FLAGS) (Linux 6.12); where that
 * fails, flowd_set_state reports their state changes. */
SEC("iter/tcp")
int flowd_existing(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct flow_state *st;
	struct tcp_sock *tp;
	struct sock *sk;
	__u64 cgroup_id;
	__u8 state;
	int cb, old;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; /* TIME_WAIT and request sockets */
	sk = &tp->inet_conn.icsk_inet.sk;
	state = skc->skc_state;
	if (!synchronized(state))
		return 0;
	cgroup_id = socket_cgroup_id(sk);
	if (!all_cgroups && !bpf_map_lookup_elem(&subtree, &cgroup_id))
		return 0;
	if (!flow_matches(skc))
		return 0;
	st = new_flow(sk, tp, bpf_get_socket_cookie(sk), cgroup_id);
	if (!st)
		return 0;
	old = tp->bpf_sock_ops_cb_flags;
	cb = old | wanted_cb_flags();
	if (cb != old && bpf_setsockopt(sk, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, &cb, sizeof(cb)) &&
	    !(old & BPF_SOCK_OPS_STATE_CB_FLAG)) {
		st->flags |= FLOW_NO_CALLBACKS;
		__sync_fetch_and_add(&existing_without_callbacks, 1);
	}
	__sync_fetch_and_add(&existing_flows, 1);
	emit(tp, st, FLOWD_EVENT_OPEN, 0, state, FLOWD_RECORD_EXISTING, bpf_ktime_get_ns());
	note_record(ctx->meta->seq);
	return 0;
}

/* The state changes of the flows flowd_existing could not give callbacks
 * to. Attached while there are any; it runs on every state change of every
 * socket of the host, so it looks at nothing else first. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(flowd_set_state, struct sock *sk, int old_state, int new_state)
{
	struct flow_state *st;
	struct tcp_sock *tp;

	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	st = flow_of(sk);
	if (!st || !(st->flags & FLOW_NO_CALLBACKS))
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	if (!tp)
		return 0;
	if (new_state == TCP_CLOSE)
		__sync_fetch_and_sub(&existing_without_callbacks, 1);
	change_state(sk, tp, st, old_state, new_state, bpf_ktime_get_ns());
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
