package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/sink"
	"github.com/flowd/flowd/utils/flows"
)

// daemon is a flowd run started by a test.
type runningDaemon struct {
	cmd     *exec.Cmd
	stderr  *lockedBuffer
	exited  chan error
	metrics string
}

// startDaemon runs flowd with config (YAML; a metrics address is added)
// and flags, and waits until it records.
func startDaemon(t *testing.T, config string, flags ...string) *runningDaemon {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &runningDaemon{metrics: ln.Addr().String(), stderr: &lockedBuffer{}, exited: make(chan error, 1)}
	ln.Close()
	path := writeConfig(t, config+fmt.Sprintf("metrics:\n  listen: %q\n", d.metrics))
	d.cmd = exec.Command(flowdBin, append([]string{"run", "--config", path}, flags...)...)
	d.cmd.Env = env()
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			<-d.exited
		}
	})
	d.waitLog(t, "recording flows", 20*time.Second)
	return d
}

func (d *runningDaemon) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for !strings.Contains(d.stderr.String(), s) {
		select {
		case <-d.exited:
			t.Fatalf("flowd exited (status %d) before logging %q:\n%s", d.cmd.ProcessState.ExitCode(), s, d.stderr.String())
		case <-deadline:
			t.Fatalf("flowd did not log %q within %s:\n%s", s, timeout, d.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and checks that flowd exits 0 within 2 s.
func (d *runningDaemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(2 * time.Second):
		t.Fatalf("flowd did not exit within 2 s of SIGTERM:\n%s", d.stderr.String())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, d.stderr.String())
	}
}

func (d *runningDaemon) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func attachedPrograms(t *testing.T, cg string) int {
	t.Helper()
	fd, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	res, err := link.QueryPrograms(link.QueryOptions{Target: fd, Attach: ebpf.AttachCGroupSockOps})
	if err != nil {
		t.Fatalf("querying %s: %v", cg, err)
	}
	return len(res.Programs)
}

// oneFlow moves 4 MiB over a loopback connection in cg, long enough for a
// 100 ms netlink poll to see it, closes it, and returns the client's cookie
// once its records can have reached a running daemon's ring buffer.
func oneFlow(t *testing.T, cg string) uint64 {
	t.Helper()
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 4<<20)
	time.Sleep(300 * time.Millisecond) // let netlink see it
	p.Client.Close()
	p.Server.Close()
	time.Sleep(100 * time.Millisecond) // the close records are in the ring buffer, not yet read
	return cookie
}

// TestDaemonRecordsAndDetaches runs the real daemon with both backends on
// a temporary cgroup, moves bytes in it, stops it with SIGTERM and checks
// that every record reached the file and nothing stays attached.
func TestDaemonRecordsAndDetaches(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	out := filepath.Join(t.TempDir(), "records.jsonl")
	d := startDaemon(t, fmt.Sprintf("backends: [ebpf, netlink]\ncgroup: %s\nebpf:\n  interval: 0s\nnetlink:\n  interval: 100ms\noutput:\n  path: %s\n", cg, out))
	if n := attachedPrograms(t, cg); n != 1 {
		t.Fatalf("%d sockops programs attached to %s while flowd runs, want 1", n, cg)
	}

	cookie := oneFlow(t, cg)
	d.stop(t)

	if n := attachedPrograms(t, cg); n != 0 {
		t.Fatalf("%d sockops programs still attached to %s after SIGTERM", n, cg)
	}
	recs, err := flows.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	events := map[string]int{}
	for _, r := range recs {
		if r.Cookie == cookie {
			events[r.Backend+"/"+r.Event.String()]++
		}
	}
	for _, want := range []string{"ebpf/open", "ebpf/sample", "ebpf/state", "ebpf/close", "netlink/open"} {
		if events[want] == 0 {
			t.Errorf("no %s record of the flow in the output; got %v", want, events)
		}
	}
}

// TestDaemonOutputMembers runs the real daemon with output.tcp_info set and
// both backends, moves bytes, and checks that every line of the flow holds
// exactly the listed members.
func TestDaemonOutputMembers(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	out := filepath.Join(t.TempDir(), "records.jsonl")
	d := startDaemon(t, fmt.Sprintf("backends: [ebpf, netlink]\ncgroup: %s\nebpf:\n  interval: 0s\nnetlink:\n  interval: 100ms\n"+
		"output:\n  path: %s\n  tcp_info: [snd_cwnd, rtt, bytes_acked]\n", cg, out))
	cookie := oneFlow(t, cg)
	d.stop(t)

	recs, err := flows.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"snd_cwnd", "rtt", "bytes_acked"}
	seen := map[string]int{}
	for _, r := range recs {
		if r.Cookie != cookie {
			continue
		}
		seen[r.Backend+"/"+r.Event.String()]++
		var got []string
		for f := range flow.NumFields {
			if r.Info.Has(f) {
				got = append(got, f.Name())
			}
		}
		// In Field order; a record may lack a member (netlink's close
		// record of a vanished socket has none), a sample may not.
		if r.Event == flow.EventSample && !slices.Equal(got, []string{"rtt", "snd_cwnd", "bytes_acked"}) {
			t.Errorf("%s %s record holds %v, want %v", r.Backend, r.Event, got, want)
		}
		for _, name := range got {
			if !slices.Contains(want, name) {
				t.Errorf("%s %s record holds %s, not listed", r.Backend, r.Event, name)
			}
		}
	}
	if seen["ebpf/sample"] == 0 || seen["netlink/sample"] == 0 {
		t.Errorf("records of the flow: %v, want samples from both backends", seen)
	}
}

// TestDaemonReportsDrops fills a one-page ring buffer while the daemon is
// stopped (SIGSTOP: nothing reads it) and checks that, once it runs again,
// it logs the drops and exports them.
func TestDaemonReportsDrops(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	out := filepath.Join(t.TempDir(), "records.jsonl")
	// A 4 KiB ring holds about ten records; a transfer sampled on every RTT
	// callback makes hundreds.
	d := startDaemon(t, fmt.Sprintf("backends: [ebpf]\ncgroup: %s\nebpf:\n  interval: 0s\n  ringbuf_size: 4096\noutput:\n  path: %s\n", cg, out))
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	p := testutil.Dial(t, cg, ln)
	p.Send(t, 16<<20)
	if err := d.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, "records dropped", 15*time.Second)

	m := regexp.MustCompile(`(?m)^flowd_ringbuf_drops_total\{backend="ebpf"\} (\S+)$`).FindStringSubmatch(d.scrape(t))
	if m == nil {
		t.Fatal("no flowd_ringbuf_drops_total{backend=\"ebpf\"} in the metrics")
	}
	if v, err := strconv.ParseFloat(m[1], 64); err != nil || v <= 0 {
		t.Fatalf("flowd_ringbuf_drops_total = %s, want > 0", m[1])
	}
	d.stop(t)
	if _, err := os.Stat(out); err != nil {
		t.Fatal(err)
	}
}

// TestDaemonReopensOnSIGHUP: log rotation with the real daemon. The output
// file is renamed, SIGHUP makes flowd write a new one at output.path, and
// each flow's records are in the file that was current when they were
// written; flowd keeps running.
func TestDaemonReopensOnSIGHUP(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "records.jsonl")
	d := startDaemon(t, fmt.Sprintf("backends: [ebpf]\ncgroup: %s\nebpf:\n  mode: transition\noutput:\n  path: %s\n", cg, out))
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")

	// connection opens and closes a connection and waits until its client's
	// close record is in the file at path.
	connection := func(path string) uint64 {
		t.Helper()
		p := testutil.Dial(t, cg, ln)
		cookie := testutil.Cookie(t, p.Client)
		p.Client.Close()
		p.Server.Close()
		testutil.WaitFor(t, "the close record in "+path, 5*time.Second, func() bool {
			recs, err := flows.Load(path)
			if err != nil {
				return false
			}
			for _, r := range recs {
				if r.Cookie == cookie && r.Event.String() == "close" {
					return true
				}
			}
			return false
		})
		return cookie
	}
	first := connection(out)
	rotated := out + ".1"
	if err := os.Rename(out, rotated); err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, "SIGHUP: reopened the output", 5*time.Second)
	second := connection(out)
	d.stop(t)

	for _, f := range []struct {
		path       string
		has, lacks uint64
	}{{rotated, first, second}, {out, second, first}} {
		recs, err := flows.Load(f.path)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[uint64]bool{}
		for _, r := range recs {
			seen[r.Cookie] = true
		}
		if !seen[f.has] || seen[f.lacks] {
			t.Errorf("%s: records of cookie %d: %v, of cookie %d: %v; want true, false", f.path, f.has, seen[f.has], f.lacks, seen[f.lacks])
		}
	}
}

// TestDaemonEverydayRun runs flowd as a person would, with flags only: a
// cgroup relative to the cgroup2 mount, both backends, a port, an
// interval and an output file. A flow on that port in a cgroup made after
// flowd started gets records that name the cgroup by path, every line
// stands alone (jq selects the flow's samples by port and reads their
// rtt), and a flow on another port is not recorded.
func TestDaemonEverydayRun(t *testing.T) {
	testutil.RequireRoot(t)
	mount := requireCgroup2(t)
	cg := testutil.TempCgroup(t)
	rel, err := filepath.Rel(mount, cg)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "records.jsonl")
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	other := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	d := startDaemon(t, "", "--cgroup", rel, "--backend", "ebpf,netlink", "--interval", "50ms",
		"--port", strconv.Itoa(int(testutil.Port(ln.Addr()))), "--output", out)

	late := filepath.Join(cg, "late.service")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	p := testutil.Dial(t, late, ln)
	cookie := testutil.Cookie(t, p.Client)
	port := testutil.Port(p.Client.LocalAddr())
	q := testutil.Dial(t, late, other)
	otherCookie := testutil.Cookie(t, q.Client)
	for range 6 {
		p.Send(t, 1<<20)
		q.Send(t, 1<<20)
		time.Sleep(50 * time.Millisecond)
	}
	p.Client.Close()
	p.Server.Close()
	q.Client.Close()
	q.Server.Close()
	time.Sleep(200 * time.Millisecond) // the close records in the ring buffer and the last dump
	d.stop(t)

	recs, err := flows.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	wantPath := rel + "/late.service"
	named := map[string]int{}
	for _, r := range recs {
		switch {
		case r.Cookie == otherCookie:
			t.Fatalf("a record of the flow on another port: %+v", r)
		case r.Cookie != cookie:
			continue
		case r.Cgroup != "" && r.Cgroup != wantPath:
			t.Errorf("%s %s record names cgroup %q, want %q", r.Backend, r.Event, r.Cgroup, wantPath)
		case r.Cgroup != "":
			named[r.Backend+"/"+r.Event.String()]++
		}
	}
	for _, want := range []string{"ebpf/sample", "ebpf/close", "netlink/sample", "netlink/close"} {
		if named[want] == 0 {
			t.Errorf("no %s record of the flow names its cgroup; named: %v", want, named)
		}
	}

	// Every sample line stands alone: selected by port, it has the rtt.
	var samples, rtts []string
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		var m struct {
			Event   string
			Lport   uint16
			TCPInfo map[string]json.Number `json:"tcp_info"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		if m.Event == "sample" && m.Lport == port {
			samples = append(samples, line)
			if rtt, ok := m.TCPInfo["rtt"]; ok {
				rtts = append(rtts, rtt.String())
			}
		}
	}
	if len(samples) < 2 || len(rtts) != len(samples) {
		t.Errorf("%d samples of local port %d, %d of them with an rtt; want several, all", len(samples), port, len(rtts))
	}
	jq, err := exec.LookPath("jq")
	if err != nil {
		t.Logf("no jq: checked the selection in Go only")
		return
	}
	sel := exec.Command(jq, "-r", fmt.Sprintf(`select(.event=="sample" and .lport==%d)|.tcp_info.rtt`, port), out)
	got, err := sel.Output()
	if err != nil {
		t.Fatalf("jq: %v", err)
	}
	if want := strings.Join(rtts, "\n") + "\n"; string(got) != want {
		t.Errorf("jq selected\n%s\nwant the rtt of every sample\n%s", got, want)
	}
}

// TestMakeRun: make run writes only records to standard output, so that
// `make run | jq .` works at a shell, and `make -s run | jq .` from within
// another make (which prints "Entering directory" lines itself, as with
// -C); the build and make report on standard error.
func TestMakeRun(t *testing.T) {
	mk, err := exec.LookPath("make")
	if err != nil {
		t.Skip("skipping: no make")
	}
	mount := requireCgroup2(t)
	bin := filepath.Join(t.TempDir(), "flowd")
	// shell is the test's environment without what a make above it set.
	var shell []string
	for _, kv := range env() {
		if name, _, _ := strings.Cut(kv, "="); name != "MAKEFLAGS" && name != "MFLAGS" && name != "MAKELEVEL" {
			shell = append(shell, kv)
		}
	}
	run := func(environ []string, flags string, makeFlags ...string) *exec.Cmd {
		cmd := exec.Command(mk, append(makeFlags, "run", "BIN="+bin, "FLAGS="+flags)...)
		cmd.Dir, cmd.Env = "../..", environ
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // make and flowd, signalled together
		return cmd
	}

	// flowd stops at once, after the build: nothing on standard output.
	for _, cmd := range []*exec.Cmd{
		run(shell, "--cgroup flowd-no-such.slice"),
		run(append(shell, "MAKELEVEL=1"), "--cgroup flowd-no-such.slice", "-s"),
	} {
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err == nil || stdout.String() != "" || !strings.Contains(stderr.String(), `flowd: cgroup: "flowd-no-such.slice" is not usable`) {
			t.Fatalf("%v with a missing cgroup: %v; stdout %q; stderr:\n%s", cmd.Args, err, stdout.String(), stderr.String())
		}
	}
	if os.Geteuid() != 0 {
		return
	}

	// As root, a real run: standard output holds records and nothing else.
	cg := testutil.TempCgroup(t)
	rel, err := filepath.Rel(mount, cg)
	if err != nil {
		t.Fatal(err)
	}
	cmd := run(shell, "--cgroup "+rel+" --backend netlink --interval 50ms --events open,close")
	records, logs := &lockedBuffer{}, &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = records, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			t.Errorf("make run did not stop on SIGTERM:\n%s", logs.String())
		}
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			stop()
		}
	})
	testutil.WaitFor(t, "flowd to record", 60*time.Second, func() bool { return strings.Contains(logs.String(), "recording flows") })
	cookie := oneFlow(t, cg)
	testutil.WaitFor(t, "the close record on standard output", 5*time.Second, func() bool {
		return strings.Contains(records.String(), fmt.Sprintf(`"event":"close","cookie":%d,`, cookie))
	})
	stop()
	out := records.String()
	for line := range strings.Lines(out) {
		var r flow.Record
		if err := sink.ParseJSON([]byte(line), &r); err != nil {
			t.Errorf("standard output holds %q, not a record: %v", line, err)
		}
	}
	if n := strings.Count(out, "\n"); n < 2 {
		t.Errorf("%d records on standard output, want the flow's open and close at least:\n%s", n, out)
	}
}

// TestDaemonFollowsCgroup runs the real daemon with both backends while
// its cgroup is removed and created again, as systemd does when it
// restarts a unit: both log the removal and the new cgroup, the flows of
// the new cgroup are recorded under its id, and SIGTERM still exits 0
// with nothing left attached.
func TestDaemonFollowsCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	out := filepath.Join(t.TempDir(), "records.jsonl")
	d := startDaemon(t, fmt.Sprintf("backends: [ebpf, netlink]\ncgroup: %s\nnetlink:\n  interval: 100ms\noutput:\n  path: %s\n", cg, out))

	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, "cgroup removed", 5*time.Second)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, "attached to the cgroup created again", 5*time.Second)
	d.waitLog(t, "the cgroup was created again", 5*time.Second)
	if n := attachedPrograms(t, cg); n != 1 {
		t.Fatalf("%d sockops programs attached to the new %s, want 1", n, cg)
	}
	id, err := cgroup.ID(cg)
	if err != nil {
		t.Fatal(err)
	}
	cookie := oneFlow(t, cg)
	d.stop(t)
	if n := strings.Count(d.stderr.String(), "level=warning msg=\"cgroup removed"); n != 2 {
		t.Errorf("%d warnings about the removal, want one per backend:\n%s", n, d.stderr.String())
	}
	if n := attachedPrograms(t, cg); n != 0 {
		t.Fatalf("%d sockops programs still attached to %s after SIGTERM", n, cg)
	}

	recs, err := flows.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	opens := map[string]uint64{}
	for _, r := range recs {
		if r.Cookie == cookie && r.Event == flow.EventOpen {
			opens[r.Backend] = r.CgroupID
		}
	}
	if opens[flow.BackendEBPF] != id || opens[flow.BackendNetlink] != id {
		t.Errorf("open records of the new cgroup's flow: cgroup ids %v, want %d from both backends", opens, id)
	}
}

// TestDaemonExitsWhenCgroupRemoved: with cgroup_removed: exit, the real
// daemon exits with status 1 and an error naming the removed cgroup.
func TestDaemonExitsWhenCgroupRemoved(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	d := startDaemon(t, fmt.Sprintf("backends: [ebpf, netlink]\ncgroup: %s\ncgroup_removed: exit\nnetlink:\n  interval: 100ms\n", cg))
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
		t.Fatalf("flowd did not exit within 5 s of the removal:\n%s", d.stderr.String())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if s := d.stderr.String(); !strings.Contains(s, "flowd: ") || !strings.Contains(s, "backend: cgroup removed: "+cg) ||
		!strings.Contains(s, "(cgroup_removed is exit)") {
		t.Errorf("standard error does not say that the cgroup was removed:\n%s", s)
	}
}
