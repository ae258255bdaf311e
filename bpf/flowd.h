/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The record flowd's sockops program sends to user space, and the enums it
 * uses. Every struct here is mirrored in Go by bpf2go (-type): never by hand.
 * The layout is explicit: every member is naturally aligned, padding is
 * spelled out, and the sizes are multiples of 8. */
#ifndef FLOWD_H
#define FLOWD_H

/* Why a record was sent. Must match flow.Event. */
enum flowd_event {
	FLOWD_EVENT_OPEN = 1,
	FLOWD_EVENT_SAMPLE = 2,
	FLOWD_EVENT_STATE = 3,
	FLOWD_EVENT_CLOSE = 4,
};

/* Bits of flowd_record.flags. */
enum flowd_record_flag {
	/* An open record of a flow that was established before flowd
	 * tracked it: found at start, or adopted on a callback. */
	FLOWD_RECORD_EXISTING = 1,
};

/* Bit numbers of the presence mask, one per reported tcp_info member.
 * Must match flow.Field (a Go test compares them). */
enum flowd_field {
	FLOWD_F_STATE,
	FLOWD_F_CA_STATE,
	FLOWD_F_RETRANSMITS,
	FLOWD_F_PROBES,
	FLOWD_F_BACKOFF,
	FLOWD_F_OPTIONS,
	FLOWD_F_SND_WSCALE,
	FLOWD_F_RCV_WSCALE,
	FLOWD_F_DELIVERY_RATE_APP_LIMITED,
	FLOWD_F_FASTOPEN_CLIENT_FAIL,
	FLOWD_F_RTO,
	FLOWD_F_ATO,
	FLOWD_F_SND_MSS,
	FLOWD_F_RCV_MSS,
	FLOWD_F_UNACKED,
	FLOWD_F_SACKED,
	FLOWD_F_LOST,
	FLOWD_F_RETRANS,
	FLOWD_F_LAST_DATA_SENT,
	FLOWD_F_LAST_DATA_RECV,
	FLOWD_F_LAST_ACK_RECV,
	FLOWD_F_PMTU,
	FLOWD_F_RCV_SSTHRESH,
	FLOWD_F_RTT,
	FLOWD_F_RTTVAR,
	FLOWD_F_SND_SSTHRESH,
	FLOWD_F_SND_CWND,
	FLOWD_F_ADVMSS,
	FLOWD_F_REORDERING,
	FLOWD_F_RCV_RTT,
	FLOWD_F_RCV_SPACE,
	FLOWD_F_TOTAL_RETRANS,
	FLOWD_F_PACING_RATE,
	FLOWD_F_MAX_PACING_RATE,
	FLOWD_F_BYTES_ACKED,
	FLOWD_F_BYTES_RECEIVED,
	FLOWD_F_SEGS_OUT,
	FLOWD_F_SEGS_IN,
	FLOWD_F_NOTSENT_BYTES,
	FLOWD_F_MIN_RTT,
	FLOWD_F_DATA_SEGS_IN,
	FLOWD_F_DATA_SEGS_OUT,
	FLOWD_F_DELIVERY_RATE,
	FLOWD_F_BUSY_TIME,
	FLOWD_F_RWND_LIMITED,
	FLOWD_F_SNDBUF_LIMITED,
	FLOWD_F_DELIVERED,
	FLOWD_F_DELIVERED_CE,
	FLOWD_F_BYTES_SENT,
	FLOWD_F_BYTES_RETRANS,
	FLOWD_F_DSACK_DUPS,
	FLOWD_F_REORD_SEEN,
	FLOWD_F_RCV_OOOPACK,
	FLOWD_F_SND_WND,
	FLOWD_F_RCV_WND,
	FLOWD_F_REHASH,
	FLOWD_F_TOTAL_RTO,
	FLOWD_F_TOTAL_RTO_RECOVERIES,
	FLOWD_F_TOTAL_RTO_TIME,
	FLOWD_F_RECEIVED_CE,
	FLOWD_F_DELIVERED_E1_BYTES,
	FLOWD_F_DELIVERED_E0_BYTES,
	FLOWD_F_DELIVERED_CE_BYTES,
	FLOWD_F_RECEIVED_E1_BYTES,
	FLOWD_F_RECEIVED_E0_BYTES,
	FLOWD_F_RECEIVED_CE_BYTES,
	FLOWD_NUM_FIELDS,
};

/* tcp_info's members, computed as tcp_get_info() does (same units), grouped
 * by size so that nothing needs implicit padding. */
struct flowd_tcp_info {
	__u64 pacing_rate;		/* bytes/s */
	__u64 max_pacing_rate;		/* bytes/s */
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 delivery_rate;		/* bytes/s */
	__u64 busy_time;		/* µs */
	__u64 rwnd_limited;		/* µs */
	__u64 sndbuf_limited;		/* µs */
	__u64 bytes_sent;
	__u64 bytes_retrans;

	__u32 rto;			/* µs */
	__u32 ato;			/* µs */
	__u32 snd_mss;
	__u32 rcv_mss;
	__u32 unacked;
	__u32 sacked;
	__u32 lost;
	__u32 retrans;
	__u32 last_data_sent;		/* ms */
	__u32 last_data_recv;		/* ms */
	__u32 last_ack_recv;		/* ms */
	__u32 pmtu;
	__u32 rcv_ssthresh;
	__u32 rtt;			/* µs */
	__u32 rttvar;			/* µs */
	__u32 snd_ssthresh;
	__u32 snd_cwnd;			/* segments */
	__u32 advmss;
	__u32 reordering;
	__u32 rcv_rtt;			/* µs */
	__u32 rcv_space;
	__u32 total_retrans;
	__u32 segs_out;
	__u32 segs_in;
	__u32 notsent_bytes;
	__u32 min_rtt;			/* µs */
	__u32 data_segs_in;
	__u32 data_segs_out;
	__u32 delivered;
	__u32 delivered_ce;
	__u32 dsack_dups;
	__u32 reord_seen;
	__u32 rcv_ooopack;
	__u32 snd_wnd;
	__u32 rcv_wnd;
	__u32 rehash;
	__u32 total_rto_time;		/* ms */
	__u32 received_ce;
	__u32 delivered_e1_bytes;
	__u32 delivered_e0_bytes;
	__u32 delivered_ce_bytes;
	__u32 received_e1_bytes;
	__u32 received_e0_bytes;
	__u32 received_ce_bytes;

	__u16 total_rto;
	__u16 total_rto_recoveries;

	__u8 state;
	__u8 ca_state;
	__u8 retransmits;
	__u8 probes;
	__u8 backoff;
	__u8 options;
	__u8 snd_wscale;
	__u8 rcv_wscale;
	__u8 delivery_rate_app_limited;
	__u8 fastopen_client_fail;
	__u8 _pad[2];
};

#define FLOWD_CA_NAME_MAX 16
#define FLOWD_COMM_MAX 16

/* What every record starts with: which flow, which event, when. In poll
 * mode a state record is this alone: the walk's samples and the close
 * record carry the counters, so a state change costs a small record. */
struct flowd_head {
	__u64 timestamp_ns;		/* CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u64 cookie;			/* bpf_get_socket_cookie */
	__u64 cgroup_id;		/* the socket's cgroup v2 id */
	__u8 laddr[16];			/* network order; IPv4 in the first 4 bytes */
	__u8 raddr[16];
	__u16 lport;			/* host order */
	__u16 rport;			/* host order */
	__u8 family;			/* AF_INET or AF_INET6 */
	__u8 event;			/* enum flowd_event */
	__u8 old_state;			/* FLOWD_EVENT_STATE and FLOWD_EVENT_CLOSE only */
	__u8 new_state;			/* the flow's state after this event */
	__u8 flags;			/* enum flowd_record_flag bits */
	__u8 _pad[3];
	__u32 pid;			/* the process that connected the flow (tgid); 0: unknown */
	char ca[FLOWD_CA_NAME_MAX];	/* congestion control, NUL terminated */
	char comm[FLOWD_COMM_MAX];	/* that process's name, NUL terminated; empty when pid is 0 */
};

/* A record with tcp_info: open, sample and close records, and state
 * records in transition mode. */
struct flowd_record {
	struct flowd_head head;
	__u64 present[2];		/* bit (1 << enum flowd_field) set: member valid */
	struct flowd_tcp_info info;
};

/* Key of the remote CIDR LPM trie: IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). */
struct flowd_cidr_key {
	__u32 prefixlen;
	__u8 addr[16];
};

#endif /* FLOWD_H */
