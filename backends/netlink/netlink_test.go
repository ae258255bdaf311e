package netlink

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

func cgroupRoot(t *testing.T) string {
	t.Helper()
	root, err := cgroup.Mount()
	if err != nil {
		t.Skipf("skipping: needs a cgroup2 file system: %v", err)
	}
	return root
}

func TestNewValidates(t *testing.T) {
	root := cgroupRoot(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // in the error
	}{
		{"zero interval", Config{Cgroup: root}, "interval must be positive"},
		{"negative interval", Config{Cgroup: root, Interval: -time.Second}, "interval must be positive"},
		{"no cgroup", Config{Interval: time.Second}, "cgroup is not set"},
		{"relative cgroup", Config{Cgroup: "sys/fs/cgroup", Interval: time.Second}, "not an absolute path"},
		{"missing cgroup", Config{Cgroup: filepath.Join(root, "flowd-no-such-cgroup"), Interval: time.Second}, "does not exist"},
		{"not cgroup2", Config{Cgroup: t.TempDir(), Interval: time.Second}, "not on a cgroup2 file system"},
		{"not a directory", Config{Cgroup: filepath.Join(root, "cgroup.procs"), Interval: time.Second}, "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New(%+v) = %v, %v; want an error containing %q", tc.cfg, b, err, tc.want)
			}
		})
	}
}

func TestNewRootAndLifecycle(t *testing.T) {
	root := cgroupRoot(t)
	b, err := New(Config{Cgroup: root, Interval: time.Second}) // nil Log is fine
	if err != nil {
		t.Fatal(err)
	}
	if !b.matchAll {
		t.Errorf("the cgroup2 root %s must match every socket", root)
	}
	if b.Name() != "netlink" || b.Flows() != 0 {
		t.Errorf("Name %q, Flows %d", b.Name(), b.Flows())
	}
	var _ backends.Backend = b
	var _ backends.FlowCounter = b
	for range 2 {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if err := b.Run(context.Background(), flow.SinkFunc(func(*flow.Record) error { return nil })); !errors.Is(err, errClosed) {
		t.Errorf("Run after Close = %v, want %v", err, errClosed)
	}
}

func TestNewCopiesFilter(t *testing.T) {
	ports := []uint16{80}
	b, err := New(Config{Cgroup: cgroupRoot(t), Interval: time.Second, Filter: backends.Filter{LocalPorts: ports}})
	if err != nil {
		t.Fatal(err)
	}
	ports[0] = 443
	if b.cfg.Filter.LocalPorts[0] != 80 {
		t.Errorf("the backend shares the caller's filter slices")
	}
}

// TestWantedWithoutCgroupID checks what happens on a kernel without
// INET_DIAG_CGROUP_ID: it is said once, and sockets are out of scope unless
// the whole hierarchy is.
func TestWantedWithoutCgroupID(t *testing.T) {
	for _, all := range []bool{false, true} {
		log, hook := logtest.NewNullLogger()
		p := &poller{log: log, scope: newScope("/nonexistent", all)}
		m := &diagMsg{family: unix.AF_INET, cookie: 1}
		for range 3 {
			ok, err := p.wanted(m)
			if err != nil || ok != all {
				t.Errorf("root scope %v: wanted = %v, %v; want %v", all, ok, err, all)
			}
		}
		if n := len(hook.AllEntries()); n != 1 {
			t.Fatalf("root scope %v: %d log entries, want 1", all, n)
		}
		if e := hook.LastEntry(); e.Level != logrus.WarnLevel || !strings.Contains(e.Message, "INET_DIAG_CGROUP_ID") {
			t.Errorf("log entry %v %q", e.Level, e.Message)
		}
	}
}

func TestWantedFilter(t *testing.T) {
	p := &poller{
		log:    logrus.New(),
		scope:  newScope("/nonexistent", true),
		filter: backends.Filter{LocalPorts: []uint16{443}, RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
	}
	mk := func(family uint8, sport uint16, dst netip.Addr) *diagMsg {
		m := &diagMsg{family: family, sport: sport, dport: 5555, hasCgroupID: true}
		copy(m.dst[:], dst.AsSlice())
		return m
	}
	for _, tc := range []struct {
		m    *diagMsg
		want bool
	}{
		{mk(unix.AF_INET, 443, netip.MustParseAddr("10.1.1.1")), true},
		{mk(unix.AF_INET, 444, netip.MustParseAddr("10.1.1.1")), false},
		{mk(unix.AF_INET, 443, netip.MustParseAddr("11.1.1.1")), false},
		// The v4 prefix matches a v4-mapped peer of an IPv6 socket.
		{mk(unix.AF_INET6, 443, netip.MustParseAddr("::ffff:10.1.1.1")), true},
		{mk(unix.AF_INET6, 443, netip.MustParseAddr("2001:db8::1")), false},
	} {
		if ok, err := p.wanted(tc.m); err != nil || ok != tc.want {
			l, r := tc.m.addrs()
			t.Errorf("port %d %v->%v: wanted = %v, %v; want %v", tc.m.sport, l, r, ok, err, tc.want)
		}
	}
}

// fakeNamespaces returns the namespaces of a Run that dumps d only.
func fakeNamespaces(d *dumper) *namespaces {
	return &namespaces{log: d.log, dumpers: map[netnsID]*dumper{d.netns: d}, list: []*dumper{d}}
}

// fakeDumper returns a dumper whose requests are answered by answer, called
// with 0 for the IPv4 request and 1 for the IPv6 one.
func fakeDumper(log logrus.FieldLogger, answer func(family int, collect func([]byte) bool) error) *dumper {
	v4 := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	v6 := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	return &dumper{
		reqs: [2]familyRequest{{"IPv4", unix.AF_INET, v4}, {"IPv6", unix.AF_INET6, v6}},
		log:  log,
		execute: func(req *nl.NetlinkRequest, collect func([]byte) bool) error {
			if req == v4 {
				return answer(0, collect)
			}
			return answer(1, collect)
		},
	}
}

func TestDumpRetriesInterrupted(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	other := errors.New("EBUSY")
	for _, tc := range []struct {
		name        string
		interrupted int   // IPv4 attempts flagged NLM_F_DUMP_INTR
		fail        error // returned by the IPv6 request
		wantMsgs    []string
		wantCalls   [2]int
		wantErr     error
	}{
		{"clean", 0, nil, []string{"v4 1", "v6"}, [2]int{1, 1}, nil},
		{"interrupted then clean", maxDumpAttempts - 1, nil, []string{"v4 4", "v6"}, [2]int{maxDumpAttempts, 1}, nil},
		{"always interrupted", maxDumpAttempts, nil, nil, [2]int{maxDumpAttempts, 0}, nl.ErrDumpInterrupted},
		{"other error is not retried", 0, other, nil, [2]int{1, 1}, other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hook.Reset()
			var calls [2]int
			d := fakeDumper(log, func(family int, collect func([]byte) bool) error {
				calls[family]++
				if family == 1 {
					collect([]byte("v6"))
					return tc.fail
				}
				collect([]byte(fmt.Sprintf("v4 %d", calls[0])))
				if calls[0] <= tc.interrupted {
					return nl.ErrDumpInterrupted
				}
				return nil
			})
			msgs, err := d.dump()
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("dump error %v, want %v", err, tc.wantErr)
			}
			var got []string
			for _, m := range msgs {
				got = append(got, string(m))
			}
			if !slices.Equal(got, tc.wantMsgs) {
				t.Errorf("messages %q, want %q (those of interrupted attempts must go)", got, tc.wantMsgs)
			}
			if calls != tc.wantCalls {
				t.Errorf("calls %v, want %v", calls, tc.wantCalls)
			}
			if n := min(tc.interrupted, maxDumpAttempts-1); len(hook.AllEntries()) != n {
				t.Errorf("%d retries logged, want %d", len(hook.AllEntries()), n)
			}
		})
	}
}

// TestPollSkipsInterruptedDump checks that a dump that stays interrupted
// is skipped with a warning: no records, above all no close records for
// the flows it may have missed.
func TestPollSkipsInterruptedDump(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	msg := newMsg(unix.AF_INET, 1, netip.MustParseAddrPort("127.0.0.1:5201"), netip.MustParseAddrPort("127.0.0.1:40000"), 77).
		attr(inetDiagInfo, make([]byte, sizeofTCPInfo), false).
		attr(inetDiagCgroupID, u64(9), false).b
	var interrupted, empty bool
	p := &poller{
		nets: fakeNamespaces(fakeDumper(log, func(family int, collect func([]byte) bool) error {
			if family == 0 && !empty {
				collect(msg)
			}
			if interrupted {
				return nl.ErrDumpInterrupted
			}
			return nil
		})),
		t:     newTracker(),
		scope: newScope("/nonexistent", true),
		log:   log,
		flows: new(atomic.Int64),
		dumps: new(dumpLog),
	}
	var events []flow.Event
	step := func() {
		t.Helper()
		col := &testutil.Collector{}
		if err := p.poll(col); err != nil {
			t.Fatal(err)
		}
		for _, r := range col.Records(0) {
			events = append(events, r.Event)
		}
	}
	step()
	interrupted = true
	step()
	step()
	if n := len(hook.AllEntries()); n != 2 || hook.LastEntry().Level != logrus.WarnLevel ||
		hook.LastEntry().Data[logKeySkipped] != 2 {
		t.Errorf("%d log entries, last %+v; want 2 warnings counting the skipped dumps", n, hook.LastEntry())
	}
	if d := p.dumps.take(); len(d.Durations) != 3 || d.Failed != 2 {
		t.Errorf("Dumps: %d rounds, %d failed; want 3 rounds, the 2 skipped failed", len(d.Durations), d.Failed)
	}
	interrupted = false
	step()
	empty = true
	step()
	want := []flow.Event{flow.EventOpen, flow.EventSample, flow.EventClose}
	if !slices.Equal(events, want) {
		t.Errorf("events %v, want %v", events, want)
	}
}

// TestPollFallsBackToUserFilter: a kernel that rejects the cgroup filter
// (EINVAL: Linux before 5.9) gets the same dump again without it, once
// and for all, and the scope is then checked in user space.
func TestPollFallsBackToUserFilter(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	root := t.TempDir() // stands for the cgroup: the scope only walks directories
	id, err := cgroup.ID(root)
	if err != nil {
		t.Fatal(err)
	}
	inside := newMsg(unix.AF_INET, 1, netip.MustParseAddrPort("127.0.0.1:5201"), netip.MustParseAddrPort("127.0.0.1:40000"), 77).
		attr(inetDiagInfo, make([]byte, sizeofTCPInfo), false).
		attr(inetDiagCgroupID, u64(id), false).b
	outside := newMsg(unix.AF_INET, 1, netip.MustParseAddrPort("127.0.0.1:22"), netip.MustParseAddrPort("127.0.0.1:40001"), 78).
		attr(inetDiagInfo, make([]byte, sizeofTCPInfo), false).
		attr(inetDiagCgroupID, u64(id+1), false).b
	var filtered, plain int
	d := fakeDumper(log, nil)
	d.execute = func(req *nl.NetlinkRequest, collect func([]byte) bool) error {
		if len(req.RawData) > sizeofInetDiagReqV2 {
			filtered++
			return fmt.Errorf("dumping: %w", unix.EINVAL)
		}
		plain++
		if req == d.reqs[0].req {
			collect(inside)
			collect(outside)
		}
		return nil
	}
	p := &poller{nets: fakeNamespaces(d), t: newTracker(), scope: newScope(root, false), log: log, flows: new(atomic.Int64),
		dumps: new(dumpLog), status: backends.NewCgroupStatus(root, id, time.Now())}
	col := &testutil.Collector{}
	for range 2 {
		if err := p.poll(col); err != nil {
			t.Fatal(err)
		}
	}
	if filtered != 1 || plain != 4 {
		t.Errorf("%d filtered and %d plain requests, want 1 and 4 (2 dumps of 2 families)", filtered, plain)
	}
	if !p.userFilter || d.kfilter != nil {
		t.Errorf("userFilter = %v, requests filter = %v after the kernel rejected the filter", p.userFilter, d.kfilter)
	}
	var cookies []uint64
	for _, r := range col.Records(0) {
		cookies = append(cookies, r.Cookie)
	}
	if !slices.Equal(cookies, []uint64{77, 77}) {
		t.Errorf("records of cookies %v, want the inside socket's (77) twice", cookies)
	}
	if e := hook.LastEntry(); e == nil || e.Level != logrus.InfoLevel || !strings.Contains(e.Message, "rejected the inet_diag cgroup filter") {
		t.Errorf("log %+v, want the fallback explained at info level", e)
	}
}
