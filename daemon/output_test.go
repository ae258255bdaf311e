package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/metrics"
	"github.com/flowd/flowd/sink"
)

// streamBackend writes batches of records, their cookies counting up from
// 1, every millisecond and flushes after each batch, as a real backend
// does, until its context ends.
type streamBackend struct {
	batch   int
	written atomic.Uint64 // records the sink took
}

func (b *streamBackend) Name() string { return flow.BackendNetlink }
func (b *streamBackend) Close() error { return nil }

func (b *streamBackend) Run(ctx context.Context, s flow.Sink) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	r := record(flow.BackendNetlink, 0)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		for range b.batch {
			r.Cookie = b.written.Load() + 1
			if err := s.Write(&r); err != nil {
				return err
			}
			b.written.Add(1)
		}
		if err := flow.Flush(s); err != nil {
			return err
		}
	}
}

// counter returns the value of the daemon's counter name (no labels).
func counter(t *testing.T, d *Daemon, name string) float64 {
	t.Helper()
	mfs, err := d.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// entries returns the log entries whose message starts with msg.
func entries(hook *logtest.Hook, msg string) []*logrus.Entry {
	var es []*logrus.Entry
	for _, e := range hook.AllEntries() {
		if strings.HasPrefix(e.Message, msg) {
			es = append(es, e)
		}
	}
	return es
}

// TestOutputFullDisk: the output's file system fills up while a backend
// writes ~10,000 records/s. flowd keeps running and the backend keeps
// writing; the fault is logged when it begins and when it ends, not per
// write; the records dropped are counted in flowd_output_errors_total.
// Once space is freed, records are written again. In the end every line of
// the file parses, the records are in order, and the lines plus the
// counter are exactly the records the backend wrote.
func TestOutputFullDisk(t *testing.T) {
	// Once freed, the space holds the output's buffer and seconds more.
	dir := testutil.SmallFS(t, 16<<20)
	path := filepath.Join(dir, "records.jsonl")
	cfg := testConfig("netlink")
	cfg.Output.Path = path
	h := newHarness(t, cfg)
	h.d.out = nil
	src := &streamBackend{batch: 10}
	h.d.newNetlink = func(netlink.Config) (backends.Backend, error) { return src, nil }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- h.d.Run(ctx) }()
	running := func() {
		t.Helper()
		select {
		case err := <-done:
			t.Fatalf("Run returned during the fault: %v", err)
		default:
		}
	}
	lost := func() float64 { return counter(t, h.d, "flowd_output_errors_total") }

	waitFor(t, "records in the file", func() bool { st, err := os.Stat(path); return err == nil && st.Size() > 64<<10 })
	ballast := testutil.FillFS(t, dir)
	waitFor(t, "2,000 records lost", func() bool { return lost() >= 2000 })
	running()
	atFault := src.written.Load()
	waitFor(t, "the backend writing on", func() bool { return src.written.Load() > atFault+1000 })
	if n := len(entries(h.hook, "writing records failed")); n != 1 {
		t.Errorf("the fault's beginning logged %d times, want once", n)
	}
	if e := entries(h.hook, "writing records failed"); len(e) > 0 && !errors.Is(e[0].Data[logrus.ErrorKey].(error), unix.ENOSPC) {
		t.Errorf("the fault logged with %v, want ENOSPC", e[0].Data[logrus.ErrorKey])
	}

	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	freed := src.written.Load()
	waitFor(t, "writing again", func() bool { return len(entries(h.hook, "writing records again")) == 1 })
	waitFor(t, "records written after the fault", func() bool {
		b, _ := os.ReadFile(path)
		return bytes.Count(b, []byte{'\n'}) > 0 && len(b) > 0 && lastCookie(b) > freed
	})
	running()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}

	cookies := fileCookies(t, path)
	for i := 1; i < len(cookies); i++ {
		if cookies[i] <= cookies[i-1] {
			t.Fatalf("line %d holds record %d after %d", i+1, cookies[i], cookies[i-1])
		}
	}
	written, dropped := src.written.Load(), lost()
	t.Logf("%d records written by the backend, %d lines in the file, %v counted lost", written, len(cookies), dropped)
	if uint64(len(cookies))+uint64(dropped) != written {
		t.Errorf("%d lines in the file + %v counted lost = %d, want the %d records written", len(cookies), dropped, len(cookies)+int(dropped), written)
	}
	if n := len(entries(h.hook, "writing records still fails")); n > 1 {
		t.Errorf("the fault logged %d more times in a few seconds, want at most one line per %s", n, faultLogInterval)
	}
	if e := entries(h.hook, "writing records again"); e[0].Data[logKeyLostTotal] != int(dropped) {
		t.Errorf("the end of the fault logged %v records lost, want %v", e[0].Data[logKeyLostTotal], dropped)
	}
}

// lastCookie returns the cookie of the last line of b.
func lastCookie(b []byte) uint64 {
	b = bytes.TrimSuffix(b, []byte{'\n'})
	var r flow.Record
	if err := sink.ParseJSON(b[bytes.LastIndexByte(b, '\n')+1:], &r); err != nil {
		return 0
	}
	return r.Cookie
}

// failWriter fails every write.
type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrShortWrite }

// TestOutputFailsToTheEnd: an output that never takes a byte does not stop
// the backend; what it holds at the end is lost, counted, and named in
// Run's error.
func TestOutputFailsToTheEnd(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	h.d.out = failWriter{}
	nl := fakeOf(h.nl)
	nl.before = []flow.Record{record("netlink", 1), record("netlink", 2)}
	nl.flush = true
	stop := h.start(t)
	<-nl.started
	time.Sleep(20 * time.Millisecond)
	if nl.closes != 0 {
		t.Fatal("the backend was closed while the output failed")
	}
	err := stop()
	if !errors.Is(err, io.ErrShortWrite) || !strings.Contains(err.Error(), "2 records not written") {
		t.Errorf("Run = %v, want 2 records not written for the output's error", err)
	}
	if v := counter(t, h.d, "flowd_output_errors_total"); v != 2 {
		t.Errorf("flowd_output_errors_total = %v, want 2", v)
	}
	if nl.closes != 1 {
		t.Error("backend not closed")
	}
}

// TestOutputFailsWithBackend: when a backend fails too, Run's error names
// both the backend's failure and what the output could not write.
func TestOutputFailsWithBackend(t *testing.T) {
	h := newHarness(t, testConfig("netlink"))
	h.d.out = failWriter{}
	nl := fakeOf(h.nl)
	nl.before = []flow.Record{record("netlink", 1), record("netlink", 2)}
	nl.flush = true
	nl.exit, nl.runErr = true, errors.New("inet_diag dump: EINVAL")
	err := h.d.Run(context.Background()) // no cancel: the failure ends it
	if err == nil || !strings.Contains(err.Error(), "netlink backend: inet_diag dump: EINVAL") ||
		!errors.Is(err, io.ErrShortWrite) || !strings.Contains(err.Error(), "2 records not written") {
		t.Errorf("Run = %v, want the backend's error and 2 records not written", err)
	}
}

// TestOutputFaultsRateLimited: a fault is logged when it begins, then at
// most once per faultLogInterval with the records lost since the last
// line, and when it ends with all it lost; every record lost is counted
// at once.
func TestOutputFaultsRateLimited(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	m, err := metrics.New("test")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f := newOutputFaults(log, m)
	f.now = func() time.Time { return now }
	value := func() float64 {
		mfs, _ := m.Registry().Gather()
		for _, mf := range mfs {
			if mf.GetName() == "flowd_output_errors_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return -1
	}
	full := unix.ENOSPC
	f.Failed(0, full) // the first failed write: nothing lost yet
	for range 1000 {  // 10 s of a record dropped every 10 ms
		now = now.Add(10 * time.Millisecond)
		f.Failed(1, full)
	}
	now = now.Add(5 * time.Second)
	f.Failed(7, full)
	if v := value(); v != 1007 {
		t.Errorf("flowd_output_errors_total = %v, want 1007", v)
	}
	f.Resumed()
	f.Failed(0, full) // a new fault
	var got []string
	for _, e := range hook.AllEntries() {
		got = append(got, e.Level.String()+": "+e.Message[:strings.IndexAny(e.Message+";", ";")]+" "+fieldString(e))
	}
	want := []string{
		"error: writing records failed lost=0",
		"warning: writing records still fails lost=1000 lost_total=1000",
		"warning: writing records again lost_total=1007",
		"error: writing records failed lost=0",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// fieldString renders an entry's lost and lost_total fields.
func fieldString(e *logrus.Entry) string {
	var parts []string
	for _, k := range []string{logKeyLost, logKeyLostTotal} {
		if v, ok := e.Data[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%v", k, v))
		}
	}
	return strings.Join(parts, " ")
}

// recordOnce runs the daemon with cfg's output.path until the netlink fake
// has written one record, of cookie 7.
func recordOnce(t *testing.T, cfg *config.Config) *harness {
	t.Helper()
	h := newHarness(t, cfg)
	h.d.out = nil
	fakeOf(h.nl).before = []flow.Record{record("netlink", 7)}
	stop := h.start(t)
	<-fakeOf(h.nl).started
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestOutputFileSafety: the output file is created 0600; a file that ends
// in a partial line is mended with a warning before records are appended;
// with output.follow_symlinks a symbolic link at output.path is followed.
func TestOutputFileSafety(t *testing.T) {
	old := unix.Umask(0o022)
	defer unix.Umask(old)
	dir := t.TempDir()
	run := func(t *testing.T, path string, follow bool) *harness {
		cfg := testConfig("netlink")
		cfg.Output.Path = path
		cfg.Output.FollowSymlinks = follow
		return recordOnce(t, cfg)
	}

	t.Run("created 0600", func(t *testing.T) {
		path := filepath.Join(dir, "new.jsonl")
		run(t, path, false)
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("output created with %v (%v), want -rw-------", st.Mode(), err)
		}
	})
	t.Run("mended", func(t *testing.T) {
		path := filepath.Join(dir, "partial.jsonl")
		good := `{"time":"2026-11-22T00:41:02.123456789Z","backend":"netlink","event":"sample","cookie":6}` + "\n"
		if err := os.WriteFile(path, []byte(good+`{"time":"2026-11-22T00:4`), 0o600); err != nil {
			t.Fatal(err)
		}
		h := run(t, path, false)
		if c := fileCookies(t, path); len(c) != 2 || c[0] != 6 || c[1] != 7 {
			t.Errorf("cookies in the mended file: %v, want [6 7]", c)
		}
		ws := entries(h.hook, "the output file ended in a partial line")
		if len(ws) != 1 || ws[0].Level != logrus.WarnLevel || ws[0].Data[logKeyBytes] != 24 {
			t.Errorf("warnings about the partial line: %v, want one with bytes=24", ws)
		}
	})
	t.Run("symbolic link followed", func(t *testing.T) {
		target := filepath.Join(dir, "target.jsonl")
		link := filepath.Join(dir, "link.jsonl")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		run(t, link, true)
		if c := fileCookies(t, target); len(c) != 1 || c[0] != 7 {
			t.Errorf("cookies in the link's target: %v, want [7]", c)
		}
	})
}
