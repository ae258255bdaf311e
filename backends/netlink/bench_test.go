package netlink

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// cpuTime returns the CPU time this process has used, user and system: the
// kernel builds a dump inside the recvmsg calls that read it.
func cpuTime(tb testing.TB) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPollNamespaces measures one poll without Config.Netns: the scan
// of the cgroup's processes, then an IPv4 and an IPv6 dump in each of n
// network namespaces, parsed and diffed into records for a sink that
// discards them. Each namespace (the first is flowd's own) holds one idle
// process of the cgroup and two loopback connections of it (four sockets).
func BenchmarkPollNamespaces(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run("netns="+strconv.Itoa(n), func(b *testing.B) { benchPollNamespaces(b, n) })
	}
}

func benchPollNamespaces(b *testing.B, n int) {
	testutil.RequireRoot(b)
	cg := testutil.TempCgroup(b)
	populate := func() {
		testutil.StartProcess(b, cg)
		dialPair(b, cg, "tcp4", "127.0.0.1:0")
		dialPair(b, cg, "tcp6", "[::1]:0")
	}
	populate()
	for range n - 1 {
		testutil.NewNetns(b).Do(b, populate)
	}
	p := newTestPoller(b, Config{Cgroup: cg, Interval: time.Hour})
	var records int
	sink := flow.SinkFunc(func(*flow.Record) error { records++; return nil })
	if err := p.poll(sink); err != nil {
		b.Fatal(err)
	}
	if len(p.nets.list) != n || p.t.len() != 4*n {
		b.Fatalf("%d namespaces and %d flows, want %d and %d", len(p.nets.list), p.t.len(), n, 4*n)
	}
	records = 0
	cpu := cpuTime(b)
	for b.Loop() {
		if err := p.poll(sink); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-cpu)/float64(b.N), "cpu-ns/poll")
	b.ReportMetric(float64(records)/float64(b.N), "records/poll")
}

// BenchmarkScan measures the scan that finds the namespaces: 1000 idle
// processes in 100 cgroups below a test cgroup, and the whole host (the
// cgroup2 root, listed by /proc). steady is a scan of a scanner that knows
// the processes already (it reads the namespace of 1 in recheckEvery);
// first reads every process's; cgroups-only is the walk of the subtree
// that the scope made anyway, which the scan replaces.
func BenchmarkScan(b *testing.B) {
	testutil.RequireRoot(b)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		b.Skip("skipping: needs sleep(1) to make the processes")
	}
	cg := testutil.TempCgroup(b)
	const cgroups, each = 100, 10
	for i := range cgroups {
		dir := filepath.Join(cg, fmt.Sprint(i))
		if err := unix.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		for range each {
			cmd := exec.Command(sleep, "3600")
			cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		}
		unix.Close(fd)
	}
	root, err := cgroup.Mount()
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name, cgroup string
		all          bool
	}{{"procs=1000", cg, false}, {"root", root, true}} {
		b.Run(tc.name+"/steady", func(b *testing.B) {
			s := newNetnsScanner(tc.cgroup, tc.all)
			if _, _, err := s.scan(); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, _, err := s.scan(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(s.pids)), "procs")
		})
		if !tc.all {
			b.Run(tc.name+"/cgroups-only", func(b *testing.B) { // what the scope walked before namespaces were scanned
				for b.Loop() {
					if _, err := cgroup.Subtree(tc.cgroup); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		b.Run(tc.name+"/first", func(b *testing.B) {
			for b.Loop() {
				if _, _, err := newNetnsScanner(tc.cgroup, tc.all).scan(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
