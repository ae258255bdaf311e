package netlink

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// TestNetnsScanner checks which processes a scan reads the namespace of,
// and what it makes of what it reads, over a directory tree that stands
// for the cgroup subtree.
func TestNetnsScanner(t *testing.T) {
	root := t.TempDir()
	procs := func(dir string, pids ...int) {
		t.Helper()
		var b strings.Builder
		for _, p := range pids {
			b.WriteString(strconv.Itoa(p) + "\n")
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	child := filepath.Join(root, "child")
	procs(root, 100, 101)
	procs(child, 200, 201, 202)

	a, b := netnsID{1, 10}, netnsID{1, 11}
	netnsOf := map[int]netnsID{100: a, 101: a, 200: b, 201: a}
	var stats []int
	s := newNetnsScanner(root, false)
	s.statPid = func(pid int) (netnsID, error) {
		stats = append(stats, pid)
		if pid == 202 {
			return netnsID{}, unix.EACCES // another user's process, without CAP_SYS_PTRACE
		}
		id, ok := netnsOf[pid]
		if !ok {
			return netnsID{}, unix.ENOENT
		}
		return id, nil
	}
	rootID, err := cgroup.ID(root)
	if err != nil {
		t.Fatal(err)
	}
	childID, err := cgroup.ID(child)
	if err != nil {
		t.Fatal(err)
	}
	scan := func(want map[netnsID][]int, wantStats []int, wantDenied int) {
		t.Helper()
		stats = nil
		found, inside, err := s.scan()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(child); err == nil && !reflect.DeepEqual(inside, map[uint64]struct{}{rootID: {}, childID: {}}) {
			t.Errorf("scan %d: cgroups %v, want %d and %d", s.scans, inside, rootID, childID)
		}
		if len(found) != len(want) {
			t.Errorf("scan %d found %v, want the namespaces of %v", s.scans, found, want)
		}
		for id, pids := range want {
			if pid, ok := found[id]; !ok || !slices.Contains(pids, pid) {
				t.Errorf("scan %d: namespace %v found through %d (%v), want one of %v", s.scans, id, pid, ok, pids)
			}
		}
		slices.Sort(stats)
		if !slices.Equal(stats, wantStats) {
			t.Errorf("scan %d read the namespace of %v, want %v", s.scans, stats, wantStats)
		}
		if s.denied != wantDenied {
			t.Errorf("scan %d: %d processes denied, want %d", s.scans, s.denied, wantDenied)
		}
	}
	// The first scan reads every process, and the second once more.
	scan(map[netnsID][]int{a: {100, 101, 201}, b: {200}}, []int{100, 101, 200, 201, 202}, 1)
	scan(map[netnsID][]int{a: {100, 101, 201}, b: {200}}, []int{100, 101, 200, 201, 202}, 1)
	// Then only new processes, and each known one every recheckEvery scans:
	// 200 entered namespace a since, and 203 is new.
	netnsOf[200], netnsOf[203] = a, b
	procs(child, 200, 201, 202, 203)
	for {
		next := s.scans + 1
		var want []int
		for _, pid := range []int{100, 101, 200, 201, 202, 203} {
			if (pid+int(next))%recheckEvery == 0 || pid == 203 && (next == 3 || next == 4) {
				want = append(want, pid) // 203: new at scan 3, read again at scan 4
			}
		}
		stats = nil
		if _, _, err := s.scan(); err != nil {
			t.Fatal(err)
		}
		slices.Sort(stats)
		if !slices.Equal(stats, want) {
			t.Errorf("scan %d read the namespace of %v, want %v", s.scans, stats, want)
		}
		if s.pids[200].netns == a {
			break
		}
		if s.scans > 2+recheckEvery {
			t.Fatalf("process 200 entered another namespace and %d scans did not notice", recheckEvery)
		}
	}
	// Processes that left are forgotten, and so are their namespaces.
	procs(root)
	procs(child, 203)
	scan(map[netnsID][]int{b: {203}}, nil, 0)
	if len(s.pids) != 1 {
		t.Errorf("the scanner remembers %d processes, want 1", len(s.pids))
	}
	// A removed cgroup is no error, nor is a removed top of the subtree:
	// it holds no process and no cgroup until it is created again.
	if err := os.RemoveAll(child); err != nil {
		t.Fatal(err)
	}
	scan(map[netnsID][]int{}, nil, 0)
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	if found, inside, err := s.scan(); err != nil || len(found) != 0 || inside == nil || len(inside) != 0 {
		t.Errorf("scanning a removed subtree = %v, %v, %v; want nothing found and no error", found, inside, err)
	}
}

// TestNetnsScannerAll checks that a scanner of the cgroup2 root lists the
// processes of the host from /proc: this one among them, in its namespace.
func TestNetnsScannerAll(t *testing.T) {
	own, err := statNetns("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	s := newNetnsScanner("/nonexistent", true)
	found, inside, err := s.scan()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := found[own]; !ok || inside != nil {
		t.Errorf("found %v (cgroups %v), want this process's namespace %v and no cgroups", found, inside, own)
	}
	if p, ok := s.pids[os.Getpid()]; !ok || p.netns != own {
		t.Errorf("this process: %+v (listed %v), want in namespace %v", p, ok, own)
	}
}

// pairIn makes a loopback connection inside namespace ns whose sockets are
// in cgroup cg.
func pairIn(tb testing.TB, ns *testutil.Netns, cg string) *pair {
	tb.Helper()
	var p *pair
	ns.Do(tb, func() { p = dialPair(tb, cg, "tcp4", "127.0.0.1:0") })
	return p
}

// TestNetns checks which namespaces are dumped: without Config.Netns,
// flowd's own and those in which a process of the cgroup lives; with it,
// that one only. A connection in each of three namespaces moves real
// bytes, and each configuration must report exactly its own.
func TestNetns(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	cgID, err := cgroup.ID(cg)
	if err != nil {
		t.Fatal(err)
	}
	own := dialPair(t, cg, "tcp4", "127.0.0.1:0")
	withProc := testutil.NewNetns(t)
	withProc.Do(t, func() { testutil.StartProcess(t, cg) })
	inWithProc := pairIn(t, withProc, cg)
	noProc := testutil.NewNetns(t) // sockets of the cgroup, but none of its processes
	inNoProc := pairIn(t, noProc, cg)
	const sent = 256 << 10
	for _, p := range []*pair{own, inWithProc, inNoProc} {
		p.Send(t, sent)
	}

	for _, tc := range []struct {
		name  string
		netns string
		seen  []*pair
	}{
		{"scanned", "", []*pair{own, inWithProc}},
		{"pinned with a process", withProc.Path, []*pair{inWithProc}},
		{"pinned without a process", noProc.Path, []*pair{inNoProc}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(Config{Cgroup: cg, Interval: time.Hour, Netns: tc.netns})
			if err != nil {
				t.Fatal(err)
			}
			col := &testutil.Collector{}
			pollN(t, b, col, 2)
			want := make(map[uint64]bool)
			for _, p := range tc.seen {
				want[p.client.cookie], want[p.server.cookie] = true, true
				recs := col.Records(p.server.cookie)
				if len(recs) == 0 {
					t.Errorf("no record of server %s", p.server.local)
					continue
				}
				if got, _ := recs[len(recs)-1].Info.Get(flow.FieldBytesReceived); got < sent {
					t.Errorf("server %s: bytes_received %d, sent %d", p.server.local, got, sent)
				}
				if r := recs[0]; r.CgroupID != cgID || r.LocalAddr != p.server.local.Addr() || r.LocalPort != p.server.local.Port() {
					t.Errorf("server record %+v, want cgroup %d and local address %s", r, cgID, p.server.local)
				}
			}
			if got := cookiesSeen(t, col.Records(0)); !reflect.DeepEqual(got, want) {
				t.Errorf("reported cookies %v, want %v (own %d/%d, with a process %d/%d, without %d/%d)", got, want,
					own.client.cookie, own.server.cookie, inWithProc.client.cookie, inWithProc.server.cookie,
					inNoProc.client.cookie, inNoProc.server.cookie)
			}
		})
	}
	if _, err := New(Config{Cgroup: cg, Interval: time.Second, Netns: "/nonexistent/netns"}); err == nil {
		t.Fatal("a nonexistent netns path was accepted")
	}
}

// TestNetnsDisappears checks that a namespace in which no process of the
// cgroup lives any more stops being dumped without an error or a warning:
// its netlink socket is closed, its flows get close records, and the other
// namespaces' flows go on. Then the namespace itself goes away. One
// backend is polled step by step, another one Runs meanwhile.
func TestNetnsDisappears(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	stay := dialPair(t, cg, "tcp4", "127.0.0.1:0")
	ns := testutil.NewNetns(t)
	var proc *testutil.Process
	ns.Do(t, func() { proc = testutil.StartProcess(t, cg) })
	gone := pairIn(t, ns, cg)
	gone.Send(t, 64<<10)
	id, err := statNetns(ns.Path)
	if err != nil {
		t.Fatal(err)
	}

	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	p := newTestPoller(t, Config{Cgroup: cg, Interval: time.Hour, Log: log})
	running, err := New(Config{Cgroup: cg, Interval: 20 * time.Millisecond, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	runCol, stop := testutil.Start(t, running)
	col := &testutil.Collector{}
	poll := func() []flow.Record {
		t.Helper()
		before := len(col.Records(0))
		if err := p.poll(col); err != nil {
			t.Fatalf("poll: %v", err)
		}
		return col.Records(0)[before:]
	}
	poll()
	poll()
	for _, c := range []uint64{gone.client.cookie, gone.server.cookie} {
		if n := len(col.Records(c)); n != 2 {
			t.Fatalf("%d records of a flow in the namespace, want open and sample", n)
		}
		testutil.WaitFor(t, "Run to sample the namespace's flows", waitTimeout, func() bool {
			return len(runCol.Find(c, flow.EventSample)) > 0
		})
	}
	d := p.nets.dumpers[id]
	if d == nil {
		t.Fatal("no dumper for the namespace")
	}
	fd := d.sock.GetFd()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	sockIno := st.Ino

	proc.Stop(t) // the cgroup's last process in the namespace; the sockets stay open
	recs := poll()
	if _, ok := p.nets.dumpers[id]; ok || len(p.nets.list) != 1 {
		t.Errorf("the namespace is still dumped (%d dumpers)", len(p.nets.list))
	}
	if err := unix.Fstat(fd, &st); err == nil && st.Ino == sockIno {
		t.Errorf("the namespace's netlink socket (fd %d) is still open", fd)
	}
	want := map[uint64]flow.Event{
		gone.client.cookie: flow.EventClose, gone.server.cookie: flow.EventClose,
		stay.client.cookie: flow.EventSample, stay.server.cookie: flow.EventSample,
	}
	got := make(map[uint64]flow.Event)
	for _, r := range recs {
		got[r.Cookie] = r.Event
		if r.Event == flow.EventClose && r.State != flow.StateEstablished {
			t.Errorf("close record in %s, want the last seen ESTABLISHED", r.State)
		}
	}
	if !reflect.DeepEqual(got, want) || len(recs) != len(want) {
		t.Errorf("records after the process exited: %v, want %v", got, want)
	}

	for _, c := range []uint64{gone.client.cookie, gone.server.cookie} {
		testutil.WaitFor(t, "Run to close the namespace's flows", waitTimeout, func() bool {
			return len(runCol.Find(c, flow.EventClose)) == 1
		})
	}

	// The namespace goes away: nothing holds it any more.
	gone.Client.Close()
	gone.Server.Close()
	ns.Close()
	for range 2 {
		for _, r := range poll() {
			if r.Cookie != stay.client.cookie && r.Cookie != stay.server.cookie || r.Event != flow.EventSample {
				t.Errorf("record after the namespace went away: %s of cookie %d", r.Event, r.Cookie)
			}
		}
	}
	samples := len(runCol.Find(stay.client.cookie, flow.EventSample))
	testutil.WaitFor(t, "Run to go on sampling the other flows", waitTimeout, func() bool {
		return len(runCol.Find(stay.client.cookie, flow.EventSample)) >= samples+2
	})
	if err := stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	for _, r := range runCol.Records(0) {
		if (r.Cookie == gone.client.cookie || r.Cookie == gone.server.cookie) && r.Event == flow.EventClose &&
			r.State != flow.StateEstablished {
			t.Errorf("Run: close record in %s, want the last seen ESTABLISHED", r.State)
		}
	}
	stopped := false
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("logged at %s: %s %v", e.Level, e.Message, e.Data)
		}
		stopped = stopped || e.Data[logKeyNetns] == id.ino && strings.Contains(e.Message, "stopped dumping")
	}
	if !stopped {
		t.Error("no debug line says the namespace is no longer dumped")
	}
}

// TestNetnsRefused checks that namespaces flowd may not enter are left out
// without a warning storm: one warning for the first, a debug line for the
// next, nothing more while they stay, and again once one comes back.
func TestNetnsRefused(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	found := make(map[netnsID]int)
	for range 2 {
		ns := testutil.NewNetns(t)
		var proc *testutil.Process
		ns.Do(t, func() { proc = testutil.StartProcess(t, cg) })
		id, err := statNetns(ns.Path)
		if err != nil {
			t.Fatal(err)
		}
		found[id] = proc.Pid
	}
	log, hook := logtest.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	n, err := newScannedNamespaces(log)
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	n.openIn = func(netns.NsHandle) (*nl.NetlinkSocket, error) {
		return nil, fmt.Errorf("entering the network namespace: %w", unix.EPERM)
	}
	levels := func() (warn, debug int) {
		for _, e := range hook.AllEntries() {
			switch e.Level {
			case logrus.WarnLevel:
				warn++
			case logrus.DebugLevel:
				debug++
			default:
				t.Errorf("logged at %s: %s", e.Level, e.Message)
			}
		}
		hook.Reset()
		return warn, debug
	}
	for i, want := range [][2]int{{1, 1}, {0, 0}} {
		if err := n.sync(found); err != nil {
			t.Fatal(err)
		}
		if w, d := levels(); w != want[0] || d != want[1] {
			t.Errorf("sync %d: %d warnings and %d debug lines, want %d and %d", i, w, d, want[0], want[1])
		}
		if len(n.list) != 1 || len(n.refused) != 2 {
			t.Errorf("sync %d: %d namespaces dumped and %d refused, want flowd's own and 2", i, len(n.list), len(n.refused))
		}
	}
	// One namespace goes away and comes back: said again, at debug level.
	var id netnsID
	for id = range found {
		break
	}
	pid := found[id]
	delete(found, id)
	if err := n.sync(found); err != nil {
		t.Fatal(err)
	}
	found[id] = pid
	if err := n.sync(found); err != nil {
		t.Fatal(err)
	}
	if w, d := levels(); w != 0 || d != 1 {
		t.Errorf("a refused namespace that came back: %d warnings and %d debug lines, want 0 and 1", w, d)
	}
}
