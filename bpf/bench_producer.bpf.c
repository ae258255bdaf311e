// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* A synthetic producer of flowd records, for benchmarks only.
 *
 * Each run reserves a struct flowd_record in the ring buffer, fills it as
 * flowd.bpf.c's emit() does for a sample of a busy flow (every member
 * present, realistic magnitudes that change from run to run) and submits
 * it with the same wakeup policy, counting a full buffer in the same drop
 * counter. It is a tc program only because tc programs support
 * BPF_PROG_TEST_RUN with repeat, without the XDP dispatcher update that
 * costs XDP programs milliseconds per test run: user space runs it N times
 * in a row with one syscall. User space replaces events and drops with the maps of a
 * loaded flowd program, so the records reach the real reader. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "flowd.h"

#define AF_INET 2
#define TCP_ESTABLISHED 1
#define TC_ACT_OK 0

/* Set by user space as for flowd.bpf.c. */
const volatile __u64 wakeup_bytes = 1 << 20;
/* How many flows the records are spread over. */
const volatile __u32 flows = 1024;

/* Replaced by flowd's own maps: same types and layouts as in flowd.bpf.c. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Runs so far, per CPU: every run produces one record or one drop. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} runs SEC(".maps");

static __always_inline void count_drop(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&drops, &zero);

	if (n)
		*n += 1;
}

/* Values of a sample taken in the middle of a 64 MiB loopback transfer on
 * Linux 6.18, moved on by n, the number of samples before this one. */
static __always_inline void fill_info(struct flowd_record *r, __u64 n)
{
	struct flowd_tcp_info *i = &r->info;

	r->present[0] = ~0ULL;
	r->present[1] = (1ULL << (FLOWD_NUM_FIELDS - 64)) - 1;

	i->pacing_rate = 681023200000ULL + (n & 0xffff) * 1000;
	i->max_pacing_rate = ~0ULL;
	i->bytes_acked = 33423361 + n * 46000;
	i->delivery_rate = 39289800000ULL - (n & 0xfff) * 10000;
	i->busy_time = 8000 + n * 4;
	i->rwnd_limited = 8000 + n;
	i->bytes_sent = 33423360 + n * 46000;

	i->rto = 204000;
	i->snd_mss = 65483;
	i->rcv_mss = 536;
	i->unacked = n & 7;
	i->last_data_recv = 8;
	i->pmtu = 65535;
	i->rcv_ssthresh = 65495;
	i->rtt = 10 + (n & 31);
	i->rttvar = 74 - (n & 15);
	i->snd_ssthresh = 2147483647;
	i->snd_cwnd = 52 + (n & 63);
	i->advmss = 65483;
	i->reordering = 3;
	i->rcv_space = 65495;
	i->segs_out = 722 + n;
	i->segs_in = 342 + n / 2;
	i->notsent_bytes = 3601618 - (n & 0xffff);
	i->min_rtt = 2;
	i->data_segs_out = 720 + n;
	i->delivered = 721 + n;
	i->snd_wnd = 23552;
	i->rcv_wnd = 65536;

	i->state = TCP_ESTABLISHED;
	i->options = 7;
	i->snd_wscale = 10;
	i->rcv_wscale = 10;
}

SEC("tc")
int produce(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u64 *runs_so_far = bpf_map_lookup_elem(&runs, &zero);
	struct flowd_record *r;
	__u64 n, flow;

	if (!runs_so_far)
		return TC_ACT_OK;
	n = (*runs_so_far)++;
	flow = n % flows;

	r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count_drop();
		return TC_ACT_OK;
	}
	__builtin_memset(r, 0, sizeof(*r));

	struct flowd_head *h = &r->head;
	h->timestamp_ns = bpf_ktime_get_ns();
	h->cookie = ((__u64)bpf_get_smp_processor_id() << 32) + flow + 1;
	h->cgroup_id = 18360;
	h->event = FLOWD_EVENT_SAMPLE;
	h->new_state = TCP_ESTABLISHED;
	h->family = AF_INET;
	h->lport = 60112;
	h->rport = 1024 + flow;
	__u32 l = bpf_htonl(0x7f000001), d = bpf_htonl(0x0a000000 + flow);
	__builtin_memcpy(h->laddr, &l, 4);
	__builtin_memcpy(h->raddr, &d, 4);
	__builtin_memcpy(h->ca, "cubic", 6);

	fill_info(r, n / flows);

	/* The wakeup policy of flowd.bpf.c's emit(). */
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(r, flags);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
