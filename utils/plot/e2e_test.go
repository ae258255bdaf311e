package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/sink"
	"github.com/flowd/flowd/utils/flows"
)

// TestRealRun records one loopback upload with both backends, writes their
// records as flowd does, with partial and with complete sample lines, and
// summarises and plots them: both views of the flow, the sending end and
// the receive-only one.
func TestRealRun(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetns(t)
	cg := testutil.TempCgroup(t)
	eb, err := ebpf.New(ebpf.Config{Cgroup: cg, Mode: ebpf.ModePoll, Interval: 20 * time.Millisecond, FlushInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("ebpf backend: %v", err)
	}
	nb, err := netlink.New(netlink.Config{Cgroup: cg, Interval: 20 * time.Millisecond, Netns: ns.Path})
	if err != nil {
		t.Fatalf("netlink backend: %v", err)
	}
	ecol, estop := testutil.Start(t, eb)
	ncol, nstop := testutil.Start(t, nb)

	var ln net.Listener
	ns.Do(t, func() { ln = testutil.Listen(t, cg, "tcp4", "127.0.0.1:0") })
	var p testutil.Pair
	ns.Do(t, func() { p = testutil.Dial(t, cg, ln) })
	sender, receiver := testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)
	received := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(io.Discard, p.Server)
		received <- n
	}()
	var sent int64
	buf := make([]byte, 64<<10)
	for end := time.Now().Add(time.Second); time.Now().Before(end); {
		n, err := p.Client.Write(buf)
		sent += int64(n)
		if err != nil {
			t.Fatal(err)
		}
	}
	p.Quiesce(t)
	time.Sleep(100 * time.Millisecond) // a netlink dump after the last byte was acknowledged
	p.Client.Close()
	if n := <-received; n != sent {
		t.Fatalf("sent %d bytes, received %d", sent, n)
	}
	p.Server.Close()
	for _, c := range []struct {
		name string
		col  *testutil.Collector
	}{{"ebpf", ecol}, {"netlink", ncol}} {
		testutil.WaitFor(t, c.name+" close records", 5*time.Second, func() bool {
			return len(c.col.Find(sender, flow.EventClose)) > 0 && len(c.col.Find(receiver, flow.EventClose)) > 0
		})
	}
	if err := estop(); err != nil {
		t.Fatal(err)
	}
	if err := nstop(); err != nil {
		t.Fatal(err)
	}

	// One output of each backend, with partial sample lines (the netlink
	// one gzip'd), and the same with complete lines.
	partial, full := t.TempDir(), t.TempDir()
	writeOutput(t, filepath.Join(partial, "ebpf.jsonl"), ecol.Records(0), sink.SamplesChanges, false)
	writeOutput(t, filepath.Join(partial, "netlink.jsonl.gz"), ncol.Records(0), sink.SamplesChanges, true)
	writeOutput(t, filepath.Join(full, "ebpf.jsonl"), ecol.Records(0), sink.SamplesFull, false)
	writeOutput(t, filepath.Join(full, "netlink.jsonl"), ncol.Records(0), sink.SamplesFull, false)
	sums := summaries(t, partial)
	if fullSums := summaries(t, full); !reflect.DeepEqual(sums, fullSums) {
		t.Errorf("partial and complete lines summarise differently:\n%+v\n%+v", sums, fullSums)
	}

	byKey := map[flows.Key]flows.Summary{}
	for _, s := range sums {
		byKey[s.Key()] = s
	}
	for _, backend := range []string{"ebpf", "netlink"} {
		s, ok := byKey[flows.Key{Backend: backend, Cookie: sender}]
		if !ok {
			t.Fatalf("no %s summary of the sending end", backend)
		}
		// eBPF counts from the flow's establishment, netlink from its first
		// dump. bytes_acked counts the SYN; the close record's counters
		// (netlink: the last dump's) count the FIN, or not yet.
		col := ecol
		if backend == "netlink" {
			col = ncol
		}
		recs := col.Records(sender)
		before, _ := recs[0].Info.Get(flow.FieldBytesAcked)
		if got := int64(s.BytesAcked + before - 1); got < sent || got > sent+1 || s.BytesAcked < uint64(sent)*9/10 {
			t.Errorf("%s: %d bytes acked since its first record (%d before), %d sent", backend, s.BytesAcked, before, sent)
		}
		if s.Verdict == flows.VerdictIdle || s.Verdict == flows.VerdictUnknown || s.Verdict == flows.VerdictReceiver || s.Limits == nil {
			t.Errorf("%s: sending end's verdict %s", backend, s.Verdict)
		}
		if s.RTTMedian <= 0 || s.RTTMin <= 0 || s.RTTMin > s.RTTMedian || s.RTTMedian > s.RTTP95 {
			t.Errorf("%s: rtt min/median/p95 %g/%g/%g", backend, s.RTTMin, s.RTTMedian, s.RTTP95)
		}
		r, ok := byKey[flows.Key{Backend: backend, Cookie: receiver}]
		if !ok {
			t.Fatalf("no %s summary of the receiving end", backend)
		}
		before, _ = col.Records(receiver)[0].Info.Get(flow.FieldBytesReceived)
		if got := int64(r.BytesReceived + before); got < sent || got > sent+1 || r.BytesReceived < uint64(sent)*9/10 {
			t.Errorf("%s: %d bytes received since its first record (%d before), %d sent", backend, r.BytesReceived, before, sent)
		}
		if r.Verdict != flows.VerdictReceiver || r.PeerVerdict != s.Verdict {
			t.Errorf("%s: receiving end's verdict %s (peer %s), want receiver (peer %s)", backend, r.Verdict, r.PeerVerdict, s.Verdict)
		}
		if r.Local != s.Remote || r.Remote != s.Local {
			t.Errorf("%s: ends %s->%s and %s->%s", backend, s.Local, s.Remote, r.Local, r.Remote)
		}
	}

	// The receive-only end is drawn from bytes_received, by both backends.
	for _, backend := range []string{"ebpf", "netlink"} {
		r := byKey[flows.Key{Backend: backend, Cookie: receiver}]
		c := newCollector(r.Start, r.Start, r.End, r.Records)
		col := ecol
		if backend == "netlink" {
			col = ncol
		}
		for _, rec := range col.Records(receiver) {
			c.add(&rec)
		}
		if rate := c.series().RecvRate; len(rate) == 0 || highest(rate) <= 0 {
			t.Errorf("%s: the receiving end's throughput has no point: %v", backend, rate)
		}
	}

	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-o", out, partial}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("plot: exit status %d: %s", code, stderr.String())
	}
	index := readFile(t, filepath.Join(out, "index.html"))
	for _, cookie := range []uint64{sender, receiver} {
		dir := "flow-" + strconv.FormatUint(cookie, 10)
		if !strings.Contains(index, `href="`+dir+`/index.html"`) {
			t.Errorf("index.html does not link flow %d", cookie)
		}
		page := readFile(t, filepath.Join(out, dir, "index.html"))
		for _, want := range []string{"<td>ebpf</td>", "<td>netlink</td>", `src="throughput.svg"`} {
			if !strings.Contains(page, want) {
				t.Errorf("%s/index.html lacks %s", dir, want)
			}
		}
		for _, name := range []string{"rtt", "cwnd", "throughput", "retransmits", "limited"} {
			if fi, err := os.Stat(filepath.Join(out, dir, name+".png")); err != nil || fi.Size() == 0 {
				t.Errorf("%s/%s.png: %v", dir, name, err)
			}
		}
	}
	if !strings.Contains(index, "receiver (peer: ") {
		t.Error("index.html does not show the receiving end's peer verdict")
	}
	if *keepPlots != "" {
		t.Logf("plots copied to %s", *keepPlots)
		if err := os.CopyFS(*keepPlots, os.DirFS(out)); err != nil {
			t.Error(err)
		}
	}
}

// writeOutput writes recs as flowd's output does.
func writeOutput(t *testing.T, path string, recs []flow.Record, samples sink.Samples, gzipped bool) {
	t.Helper()
	var b bytes.Buffer
	j := sink.NewJSONL(&b)
	j.SetSamples(samples)
	for i := range recs {
		if err := j.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	data := b.Bytes()
	if gzipped {
		data = gz(t, data)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func summaries(t *testing.T, dir string) []flows.Summary {
	t.Helper()
	srcs, err := flows.Sources([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var z flows.Summarizer
	st, err := flows.Each(srcs, nil, func(r *flow.Record) error {
		z.Add(r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st.Incomplete != 0 {
		t.Errorf("%s: %s", dir, st.Warning())
	}
	return z.Summaries()
}
