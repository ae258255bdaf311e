#!/usr/bin/env bash
# paired-cost.sh: A/B of what one record costs at `ebpf.interval: 0s`, with
# both flowd binaries attached to the same cgroup at once, under one
# CPU-bound loopback iperf3 flow. Both programs run on every RTT callback
# of the same flow and both daemons read through the same seconds, so the
# host's moods (other jobs, a third slower from one minute to the next)
# move A and B together, which alternating runs cannot promise. What is
# left: the program that runs first pays for the socket's cold cache
# lines, so run both orders. The same binary
# twice gives what a record costs now, for one binary.
#
#   sudo bench/paired-cost.sh FLOWD_A FLOWD_B [SECONDS]
#
#   sudo bench/paired-cost.sh ./flowd-old ./flowd 5
#   sudo ENV_B=FLOWD_OUTPUT_PATH=/dev/null bench/paired-cost.sh ./flowd ./flowd 5
#
# ENV_A / ENV_B are FLOWD_* settings (space-separated) for one of the two,
# on top of its config: output to a file in a temporary directory. Prints,
# for each, the sockops program's run time per run (kernel.bpf_stats_enabled)
# and the daemon's CPU time per run (all its threads, from
# /proc/PID/task/*/schedstat: at interval 0 nearly every run is a record).
#
# LOAD=churn runs the benchmark suite's churn of short connections (section
# 6, in a network namespace of its own) instead of iperf3, with both flowd
# at their defaults, and prints the same per connection (both ends):
#
#   sudo LOAD=churn bench/paired-cost.sh ./flowd-old ./flowd 5
set -euo pipefail

[ $# -ge 2 ] || { sed -n '2,26p' "$0" >&2; exit 2; }
load=${LOAD:-iperf3}
case "$load" in iperf3 | churn) ;; *) echo "LOAD=$load: iperf3 or churn" >&2; exit 2 ;; esac
bins=("$(realpath "$1")" "$(realpath "$2")")
secs=${3:-5}
port=5997

root=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$root" ] || { echo "no cgroup2 mount in /proc/self/mountinfo" >&2; exit 1; }
cg=$(mktemp -d "$root/flowd-paired-cost-XXXXXX")
dir=$(mktemp -d)
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
pids=()
server=

cleanup() {
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	if [ -n "$server" ]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; fi
	sysctl -qw kernel.bpf_stats_enabled="$stats_before"
	rmdir "$cg" || echo "left $cg behind" >&2
	rm -rf "$dir"
}
trap cleanup EXIT

flowd_progs() { bpftool prog show -j | python3 -c '
import json, sys
print(" ".join(str(p["id"]) for p in json.load(sys.stdin) if p.get("name", "").startswith("flowd_sockops")))'; }

progs=()
for k in 0 1; do
	ab=$([ "$k" = 0 ] && echo A || echo B)
	env_var=ENV_$ab
	{
		printf 'backends: [ebpf]\ncgroup: %s\noutput:\n  path: %s\n' "$cg" "$dir/$ab.jsonl"
		[ "$load" = churn ] || printf 'ebpf:\n  interval: 0s\n'
	} >"$dir/$ab.yaml"
	before=" $(flowd_progs) "
	# shellcheck disable=SC2086 # ENV_A and ENV_B are lists
	env ${!env_var:-} "${bins[$k]}" run --config "$dir/$ab.yaml" 2>"$dir/$ab.log" &
	pids+=($!)
	for _ in $(seq 50); do
		grep -qs "recording flows" "$dir/$ab.log" && break
		sleep 0.1
	done
	prog=
	for id in $(flowd_progs); do
		case "$before" in *" $id "*) ;; *) prog=$id ;; esac
	done
	[ -n "$prog" ] || { echo "flowd $ab did not attach:" >&2; cat "$dir/$ab.log" >&2; exit 1; }
	progs+=("$prog")
done

in_cgroup() { sh -c 'echo $$ >"$0/cgroup.procs"; exec "$@"' "$cg" "$@"; }
if [ "$load" = churn ]; then
	(cd "$(dirname "$0")" && go build -o "$dir/bench" .)
else
	in_cgroup iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null &
	server=$!
	sleep 0.3
fi

prog_stats() { bpftool prog show id "$1" -j | python3 -c '
import json, sys
p = json.load(sys.stdin)
print(p.get("run_time_ns", 0), p.get("run_cnt", 0))'; }
daemon_ns() { cat /proc/"$1"/task/*/schedstat | awk '{ s += $1 } END { print s }'; }

sysctl -qw kernel.bpf_stats_enabled=1
read -r ta0 ca0 < <(prog_stats "${progs[0]}")
read -r tb0 cb0 < <(prog_stats "${progs[1]}")
da0=$(daemon_ns "${pids[0]}") db0=$(daemon_ns "${pids[1]}")
if [ "$load" = churn ]; then
	in_cgroup unshare -n "$dir/bench" churn-helper -time "${secs}s" >"$dir/churn.json"
else
	in_cgroup iperf3 -c 127.0.0.1 -p "$port" -t "$secs" -C cubic >"$dir/iperf3.txt"
fi
da1=$(daemon_ns "${pids[0]}") db1=$(daemon_ns "${pids[1]}")
read -r ta1 ca1 < <(prog_stats "${progs[0]}")
read -r tb1 cb1 < <(prog_stats "${progs[1]}")

ra=$((ca1 - ca0)) rb=$((cb1 - cb0))
[ "$ra" -gt 0 ] && [ "$rb" -gt 0 ] || { echo "a program did not run" >&2; exit 1; }
if [ "$load" = churn ]; then
	sleep 0.5 # the daemons write what they drained within a flush interval
	conns=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["conns"])' "$dir/churn.json")
	echo "A: bpf-ns/conn $(((ta1 - ta0) / conns)) daemon-ns/conn $(((da1 - da0) / conns)) lines/conn $(awk -v c="$conns" 'END { printf "%.2f", NR / c }' "$dir/A.jsonl")" \
		" B: bpf-ns/conn $(((tb1 - tb0) / conns)) daemon-ns/conn $(((db1 - db0) / conns)) lines/conn $(awk -v c="$conns" 'END { printf "%.2f", NR / c }' "$dir/B.jsonl")" \
		" conns $conns runs/conn $((ra / conns))"
	exit 0
fi
gbit=$(awk '/sender/ { print $7 }' "$dir/iperf3.txt")
echo "A: bpf-ns/run $(((ta1 - ta0) / ra)) daemon-ns/run $(((da1 - da0) / ra))" \
	" B: bpf-ns/run $(((tb1 - tb0) / rb)) daemon-ns/run $(((db1 - db0) / rb))" \
	" runs $ra gbit/s $gbit"
