#!/usr/bin/env bash
# record-cost.sh: what one record costs flowd at `ebpf.interval: 0s`, in
# place, under one CPU-bound loopback iperf3 flow. For A/B experiments:
# run it alternately with two flowd binaries (or configurations) and
# compare; one run is noise (other jobs of a shared host move these
# figures by ±25% from minute to minute).
#
#   sudo bench/record-cost.sh FLOWD_BINARY [SECONDS] [YAML_LINES_UNDER_ebpf:]
#
#   sudo bench/record-cost.sh ./flowd 5
#   sudo bench/record-cost.sh ./flowd 5 '  ringbuf_size: 1048576'
#
# Prints the sockops program's run time per run (kernel.bpf_stats_enabled),
# its runs, the daemon's CPU time per run (all its threads, from
# /proc/PID/task/*/schedstat: at interval 0 nearly every run is a record)
# and iperf3's throughput.
set -euo pipefail

bin=$(realpath "$1")
secs=${2:-5}
extra=${3:-}
port=5998

root=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$root" ] || { echo "no cgroup2 mount in /proc/self/mountinfo" >&2; exit 1; }
cg=$(mktemp -d "$root/flowd-record-cost-XXXXXX")
dir=$(mktemp -d)
stats_before=$(sysctl -n kernel.bpf_stats_enabled)

cleanup() {
	set +e
	if [ -n "${flowd:-}" ]; then kill "$flowd" 2>/dev/null; wait "$flowd" 2>/dev/null; fi
	if [ -n "${server:-}" ]; then kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; fi
	sysctl -qw kernel.bpf_stats_enabled="$stats_before"
	rmdir "$cg" || echo "left $cg behind" >&2
	rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/flowd.yaml" <<EOF
backends: [ebpf]
cgroup: $cg
ebpf:
  interval: 0s
$extra
output:
  path: $dir/records.jsonl
EOF

: >"$dir/flowd.log"
"$bin" run --config "$dir/flowd.yaml" 2>"$dir/flowd.log" &
flowd=$!
for _ in $(seq 50); do
	grep -q "recording flows" "$dir/flowd.log" && break
	sleep 0.1
done
prog=$(bpftool prog show -j | python3 -c '
import json, sys
ids = [p["id"] for p in json.load(sys.stdin) if p.get("name", "").startswith("flowd_sockops")]
print(ids[-1] if ids else "")')
[ -n "$prog" ] || { echo "flowd did not attach:" >&2; cat "$dir/flowd.log" >&2; exit 1; }

in_cgroup() { sh -c 'echo $$ >"$0/cgroup.procs"; exec "$@"' "$cg" "$@"; }
in_cgroup iperf3 -s -1 -B 127.0.0.1 -p "$port" >/dev/null &
server=$!
sleep 0.3

prog_stats() { bpftool prog show id "$prog" -j | python3 -c '
import json, sys
p = json.load(sys.stdin)
print(p.get("run_time_ns", 0), p.get("run_cnt", 0))'; }
daemon_ns() { cat /proc/"$flowd"/task/*/schedstat | awk '{ s += $1 } END { print s }'; }

sysctl -qw kernel.bpf_stats_enabled=1
read -r t0 c0 < <(prog_stats)
d0=$(daemon_ns)
in_cgroup iperf3 -c 127.0.0.1 -p "$port" -t "$secs" -C cubic >"$dir/iperf3.txt"
d1=$(daemon_ns)
read -r t1 c1 < <(prog_stats)

runs=$((c1 - c0))
[ "$runs" -gt 0 ] || { echo "the program did not run" >&2; exit 1; }
gbit=$(awk '/sender/ { print $7 }' "$dir/iperf3.txt")
echo "bpf-ns/run $(((t1 - t0) / runs)) runs $runs daemon-ns/run $(((d1 - d0) / runs)) gbit/s $gbit"
