#!/usr/bin/env python3
"""rounds.py: alternated rounds of one loopback iperf3 flow under several arms.

    sudo python3 bench/rounds.py ROUNDS ARM...

Each round runs every arm once, in a random order: the arm's process is
started (none for "-"), given a second, then one CPU-bound iperf3 flow
(-t 2, cubic) runs with client and server in a temporary cgroup, and the
process is stopped. For each run it prints the throughput, the traffic's
CPU-s/s (its cgroup's cpu.stat), the arm process's CPU-s/s (its own
cgroup) and the host's idle CPU-s/s (/proc/stat); at the end, per arm,
the medians and the ratio of each round's throughput to the first arm's.
The idle time moves much less from run to run than the throughput on a
shared machine, and shows when the flow's tasks wait.

An ARM is NAME=SPEC, SPEC one of:
    -                         nothing
    flowd:BINARY[:KEY=VALUE]... flowd (backends: [ebpf]) watching the cgroup;
                              KEY=VALUE are environment variables (FLOWD_*
                              settings, GOMAXPROCS, ...); BINARY may have a
                              prefix, split on spaces ("nice -n 19 ./flowd")
    cmd:COMMAND...            any command, split on spaces
    hog:PERIOD_MS:BUSY_MS     a busy loop of BUSY_MS every PERIOD_MS

    sudo python3 bench/rounds.py 16 none=- \\
        flowd0=flowd:./flowd:FLOWD_EBPF_INTERVAL=0s hog=hog:10:0.25
"""
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PORT = 5995


def hog(period_ms, busy_ms):
    period, busy = period_ms / 1e3, busy_ms / 1e3
    while True:
        t = time.perf_counter()
        while time.perf_counter() - t < busy:
            pass
        time.sleep(max(period - (time.perf_counter() - t), 0))


def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    sys.exit("no cgroup2 mount in /proc/self/mountinfo")


def joiner(cg):
    def join():
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    return join


def cpu_seconds(cg):
    with open(os.path.join(cg, "cpu.stat")) as f:
        for line in f:
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    return 0.0


def host_idle_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[3] + fields[4]) / os.sysconf("SC_CLK_TCK")


def start(spec, cg, arm_cg, tmp, name):
    """Starts an arm's process, or returns None for "-"."""
    if spec == "-":
        return None
    kind, _, rest = spec.partition(":")
    env = dict(os.environ)
    if kind == "flowd":
        binary, *settings = rest.split(":")
        for s in settings:
            k, _, v = s.partition("=")
            env[k] = v
        conf = os.path.join(tmp, name + ".yaml")
        with open(conf, "w") as f:
            f.write(f"backends: [ebpf]\ncgroup: {cg}\noutput:\n  path: {tmp}/{name}.jsonl\n")
        argv = binary.split() + ["run", "--config", conf]
    elif kind == "cmd":
        argv = rest.split()
    elif kind == "hog":
        argv = [sys.executable, os.path.abspath(__file__), "--hog"] + rest.split(":")
    else:
        sys.exit(f"arm {name}: unknown kind {kind!r}")
    log = open(os.path.join(tmp, name + ".log"), "a")
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=joiner(arm_cg))
    log.close()  # the child has its own descriptor
    time.sleep(1.0)
    if p.poll() is not None:
        with open(log.name) as f:
            sys.exit(f"arm {name} exited with {p.returncode}:\n{f.read()}")
    return p


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--hog":
        hog(float(sys.argv[2]), float(sys.argv[3]))
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds = int(sys.argv[1])
    arms = []
    for a in sys.argv[2:]:
        name, eq, spec = a.partition("=")
        if not eq or not name or spec.partition(":")[0] not in ("-", "flowd", "cmd", "hog"):
            sys.exit(f"bad arm {a!r}: want NAME=SPEC, SPEC -, flowd:..., cmd:... or hog:...")
        arms.append((name, spec))
    root = cgroup2_root()
    cg = tempfile.mkdtemp(prefix="flowd-rounds-", dir=root)
    arm_cg = tempfile.mkdtemp(prefix="flowd-rounds-arm-", dir=root)
    tmp = tempfile.mkdtemp()
    runs = {name: [] for name, _ in arms}
    server = p = None
    try:
        server = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(PORT)],
                                  stdout=subprocess.DEVNULL, preexec_fn=joiner(cg))
        time.sleep(0.5)
        for r in range(rounds):
            order = arms[:]
            random.shuffle(order)
            for name, spec in order:
                p = start(spec, cg, arm_cg, tmp, name)
                u0, a0, i0, t0 = cpu_seconds(cg), cpu_seconds(arm_cg), host_idle_seconds(), time.monotonic()
                out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(PORT), "-t", "2", "-J", "-C", "cubic"],
                                     capture_output=True, check=True, preexec_fn=joiner(cg)).stdout
                u1, a1, i1, t1 = cpu_seconds(cg), cpu_seconds(arm_cg), host_idle_seconds(), time.monotonic()
                if p is not None:
                    p.send_signal(signal.SIGTERM)
                    p.wait()
                    p = None
                for f in os.listdir(tmp):
                    if f.endswith(".jsonl"):
                        os.unlink(os.path.join(tmp, f))
                wall = t1 - t0
                run = (json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9,
                       (u1 - u0) / wall, (a1 - a0) / wall, (i1 - i0) / wall)
                runs[name].append(run)
                print(f"round {r + 1} {name}: {run[0]:.1f} Gbit/s, traffic {run[1]:.3f}, "
                      f"arm {run[2]:.4f}, host idle {run[3]:.3f} CPU-s/s", flush=True)
    finally:
        for proc in (p, server):
            if proc is not None:
                proc.kill()
                proc.wait()
        for d in (cg, arm_cg):
            os.rmdir(d)
        shutil.rmtree(tmp)
    base = arms[0][0]
    print(f"\nper arm, medians over {rounds} rounds; ratio = throughput / {base}'s in the same round (min-max)")
    for name, _ in arms:
        got = runs[name]
        ratios = [x[0] / b[0] for x, b in zip(got, runs[base])]
        med = lambda i: statistics.median(x[i] for x in got)
        print(f"{name:12s} {med(0):6.1f} Gbit/s  ratio {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f})  traffic {med(1):.3f}  arm {med(2):.4f}  host idle {med(3):.3f}")


if __name__ == "__main__":
    main()
