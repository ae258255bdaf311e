package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"image/png"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

// generated describes a synthetic flowd output: flows that open, take
// samples and close, `open` of them at a time, one record a millisecond,
// every tcp_info member set (lines of about 1.4 kB, as the eBPF backend
// writes them).
type generated struct {
	Flows, Samples, Open int
	Changes              bool // partial sample lines (output.samples: changes)
}

// write writes the output to w. Flow i moves (i%97+1) kB a sample, so the
// busiest flows are those with i%97 == 96.
func (g generated) write(w io.Writer) error {
	j := sink.NewJSONL(w)
	if g.Changes {
		j.SetSamples(sink.SamplesChanges)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	type open struct {
		cookie uint64
		n      int
	}
	var live []open
	next := 0
	now := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	var r flow.Record
	emit := func(cookie uint64, ev flow.Event, n int) error {
		now = now.Add(time.Millisecond)
		i := cookie - 1
		r = flow.Record{Time: now, Backend: "ebpf", Event: ev, Cookie: cookie, CgroupID: 1000 + i%7, Family: 4,
			LocalAddr: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), RemoteAddr: netip.MustParseAddr("10.2.0.1"),
			LocalPort: uint16(20000 + i%40000), RemotePort: 443, State: flow.StateEstablished, CA: "cubic"}
		for f := range flow.NumFields {
			r.Info.Set(f, rng.Uint64N(1<<20))
		}
		k := uint64(n)
		for f, v := range map[flow.Field]uint64{
			flow.FieldBytesAcked: 1 + k*(i%97+1)*1000, flow.FieldBytesReceived: 1 + k*100, flow.FieldRTT: 20000 + rng.Uint64N(5000),
			flow.FieldBusyTime: k * 900, flow.FieldRwndLimited: 0, flow.FieldSndbufLimited: 0, flow.FieldTotalRetrans: k / 10,
			flow.FieldSndCwnd: 10 + k%50, flow.FieldDeliveryRateAppLimited: 0,
		} {
			r.Info.Set(f, v)
		}
		return j.Write(&r)
	}
	for next < g.Flows || len(live) > 0 {
		for len(live) < g.Open && next < g.Flows {
			next++
			live = append(live, open{cookie: uint64(next)})
			if err := emit(uint64(next), flow.EventOpen, 0); err != nil {
				return err
			}
		}
		for k := 0; k < len(live); k++ {
			f := &live[k]
			f.n++
			ev := flow.EventSample
			if f.n > g.Samples {
				ev = flow.EventClose
			}
			if err := emit(f.cookie, ev, f.n); err != nil {
				return err
			}
			if ev == flow.EventClose {
				live = append(live[:k], live[k+1:]...)
				k--
			}
		}
	}
	return j.Close()
}

func TestPlotOutput(t *testing.T) {
	var in bytes.Buffer
	if err := (generated{Flows: 300, Samples: 6, Open: 50, Changes: true}).write(&in); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"-o", out, "--top", "3", "--cgroup", "1000,1001,1002,1004,1005,1006", "-"},
		bytes.NewReader(gz(t, in.Bytes())), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	index := readFile(t, filepath.Join(out, "index.html"))
	if strings.TrimSpace(stdout.String()) != filepath.Join(out, "index.html") {
		t.Errorf("stdout %q", stdout.String())
	}
	// The busiest flows are 97, 194 and 291 (cookie-1 = 96 mod 97), then 96,
	// 193 and 290; 291 and 193 are in cgroup 1003, which is not selected.
	links := regexp.MustCompile(`href="(flow-\d+)/index.html"`).FindAllStringSubmatch(index, -1)
	var got []string
	for _, l := range links {
		got = append(got, l[1])
	}
	if want := []string{"flow-97", "flow-194", "flow-96"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("drawn %v, want %v", got, want)
	}
	if !strings.Contains(index, "Read from standard input.") {
		t.Error("index.html does not name standard input as the source")
	}
	if !strings.Contains(index, "the 3 busiest of 257 flows") {
		t.Errorf("index.html does not say how many flows were selected:\n%s", index)
	}
	for _, name := range []string{"rtt", "cwnd", "throughput", "retransmits", "limited"} {
		f, err := os.Open(filepath.Join(out, "flow-97", name+".png"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil || img.Bounds().Dx() < 1000 {
			t.Errorf("%s.png: %v, %v", name, err, img.Bounds())
		}
		checkSVG(t, filepath.Join(out, "flow-97", name+".svg"))
	}
	page := readFile(t, filepath.Join(out, "flow-97", "index.html"))
	for _, want := range []string{`src="rtt.svg"`, `href="throughput.png"`, "10.1.0.96:20096", "10.2.0.1:443", "../index.html"} {
		if !strings.Contains(page, want) {
			t.Errorf("the flow's page lacks %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "flow-291")); err == nil {
		t.Error("drew a flow of a cgroup not selected")
	}
}

func TestPlotPartialSamples(t *testing.T) {
	// Partial samples only, as `tail -n` of an output with
	// output.samples: changes leaves: no line names a flow's 4-tuple or
	// cgroup.
	var in bytes.Buffer
	if err := (generated{Flows: 2, Samples: 8, Open: 2, Changes: true}).write(&in); err != nil {
		t.Fatal(err)
	}
	var partial []byte
	for _, l := range bytes.SplitAfter(in.Bytes(), []byte("\n")) {
		if bytes.Contains(l, []byte(`"partial":true`)) {
			partial = append(partial, l...)
		}
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-o", out, "-"}, bytes.NewReader(partial), &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d: %s", code, stderr.String())
	}
	svg := readFile(t, filepath.Join(out, "flow-2", "rtt.svg"))
	if !strings.Contains(svg, ">flow 2: round-trip time<") {
		t.Errorf("rtt.svg's title is not \"flow 2: round-trip time\":\n%.2000s", svg)
	}
	for _, page := range []string{filepath.Join(out, "index.html"), filepath.Join(out, "flow-2", "index.html")} {
		html := readFile(t, page)
		if strings.Contains(html, "invalid") || !strings.Contains(html, "<td>-</td>") {
			t.Errorf("%s: unknown 4-tuple and cgroup not shown as -:\n%s", page, html)
		}
	}
}

func gz(t *testing.T, b []byte) []byte {
	t.Helper()
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return z.Bytes()
}

func TestDecimation(t *testing.T) {
	start := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	const n = 10000
	c := newCollector(start, start, start.Add(n*time.Millisecond), n+1)
	for i := range n + 1 {
		r := &flow.Record{Time: start.Add(time.Duration(i) * time.Millisecond)}
		rtt := uint64(1000)
		if i == 4321 {
			rtt = 90000 // one spike must survive
		}
		r.Info.Set(flow.FieldRTT, rtt)
		r.Info.Set(flow.FieldBytesAcked, uint64(i)*125) // 1 Mbit/s
		r.Info.Set(flow.FieldBusyTime, uint64(i)*1000)  // busy all the time
		c.add(r)
	}
	s := c.series()
	if len(s.RTT) > 2*bucketsPerFlow || len(s.SendRate) > bucketsPerFlow+1 {
		t.Errorf("%d rtt and %d rate points from %d records", len(s.RTT), len(s.SendRate), n)
	}
	if highest(s.RTT) != 90000 {
		t.Errorf("the spike was lost: highest rtt %g", highest(s.RTT))
	}
	for _, p := range s.SendRate {
		if p.Y < 0.999e6 || p.Y > 1.001e6 {
			t.Fatalf("rate %g at %g, want 1 Mbit/s", p.Y, p.X)
		}
	}
	for _, p := range s.Busy {
		if p.Y < 99.9 || p.Y > 100 {
			t.Fatalf("busy %g%% at %g", p.Y, p.X)
		}
	}
}

// peakHeap runs fn and returns the largest live heap (what the garbage
// collector found reachable) measured meanwhile.
func peakHeap(fn func()) uint64 {
	runtime.GC()
	var peak atomic.Uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		s := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			rtmetrics.Read(s)
			peak.Store(max(peak.Load(), s[0].Value.Uint64()))
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	fn()
	close(stop)
	<-done
	return peak.Load()
}

// plotGenerated writes g gzip'd to a temporary file, plots it and returns
// the peak live heap of the plotting.
func plotGenerated(tb testing.TB, g generated, top int) (peak uint64, size int64) {
	tb.Helper()
	dir := tb.TempDir()
	path := filepath.Join(dir, "flowd.jsonl.gz")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	counted := &countingWriter{w: f}
	zw := gzip.NewWriter(counted)
	cw := &countingWriter{w: zw}
	if err := g.write(cw); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := f.Close(); err != nil {
		tb.Fatal(err)
	}
	var stderr bytes.Buffer
	code := 0
	peak = peakHeap(func() {
		code = run([]string{"-o", filepath.Join(dir, "plots"), "--top", fmt.Sprint(top), path}, nil, io.Discard, &stderr)
	})
	if code != 0 {
		tb.Fatalf("exit status %d: %s", code, stderr.String())
	}
	return peak, cw.n
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// TestPlotMemoryBounded plots the same flows with four times the records
// each: the peak heap must not grow with the input's length.
func TestPlotMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 30 MB twice")
	}
	// Frequent collections: the live heap is then read near its peaks in
	// both runs, where at the default GOGC whether a collection comes
	// while a plot's canvas is live moved it by 5 MB from run to run.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	short, shortSize := plotGenerated(t, generated{Flows: 400, Samples: 10, Open: 100}, 5)
	long, longSize := plotGenerated(t, generated{Flows: 400, Samples: 40, Open: 100}, 5)
	t.Logf("peak live heap: %.1f MB for %.1f MB of input, %.1f MB for %.1f MB",
		float64(short)/1e6, float64(shortSize)/1e6, float64(long)/1e6, float64(longSize)/1e6)
	if long > short+short/2 {
		t.Errorf("peak live heap grew from %d to %d bytes with an input %.1f times as long", short, long, float64(longSize)/float64(shortSize))
	}
}

var (
	keepPlots    = flag.String("keep", "", "TestRealRun: copy the plots it drew into `DIR`")
	largeFlows   = flag.Int("large.flows", 1000, "BenchmarkPlotLarge: flows in the generated input")
	largeSamples = flag.Int("large.samples", 10, "BenchmarkPlotLarge: samples per flow")
)

// BenchmarkPlotLarge reports the peak live heap of plotting a generated
// output (gzip'd on disk) of -large.flows flows with -large.samples samples
// each; docs/plots.md gives the command and figure for 2 GB.
func BenchmarkPlotLarge(b *testing.B) {
	for b.Loop() {
		peak, size := plotGenerated(b, generated{Flows: *largeFlows, Samples: *largeSamples, Open: 1000}, 20)
		b.ReportMetric(float64(peak)/1e6, "peak-live-MB")
		b.ReportMetric(float64(size)/1e9, "input-GB")
	}
}
