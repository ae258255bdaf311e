package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"image/png"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gonum.org/v1/plot/plotter"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
	"github.com/flowd/flowd/utils/iperf3"
	"github.com/flowd/flowd/utils/report"
)

const (
	testCookie = 7
	testStream = "10.0.0.1:40000->10.0.0.2:5201"
	testSocket = 5
	testMSS    = 1448
)

var testStart = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func record(backend string, ev flow.Event, cookie uint64, at time.Duration, i uint64) *flow.Record {
	r := &flow.Record{
		Time: testStart.Add(at), Backend: backend, Event: ev, Cookie: cookie, Family: 4,
		LocalAddr: netip.MustParseAddr("10.0.0.1"), RemoteAddr: netip.MustParseAddr("10.0.0.2"),
		LocalPort: 40000, RemotePort: 5201, State: flow.StateEstablished, CA: "cubic",
	}
	for f, v := range map[flow.Field]uint64{
		flow.FieldRTT: 5000 + 100*i, flow.FieldRTTVar: 500, flow.FieldSndCwnd: 20 + i,
		flow.FieldSndMSS: testMSS, flow.FieldBytesAcked: 1 + 125000*i,
		flow.FieldDeliveryRate: 2500000, flow.FieldTotalRetrans: i / 5,
	} {
		r.Info.Set(f, v)
	}
	return r
}

// writeJSONL writes records as flowd does: one JSON object a line.
func writeJSONL(t *testing.T, path string, recs []*flow.Record) {
	t.Helper()
	var b []byte
	for _, r := range recs {
		b = append(sink.AppendJSON(b, r), '\n')
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func u64(v uint64) *uint64 { return &v }
func i64(v int64) *int64   { return &v }

// newScenario writes a tiny scenario into a new directory: one stream
// sampled every 50 ms for 1 s by both backends, five 0.2 s iperf3 intervals.
func newScenario(t *testing.T, dir string) string {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ebpf := []*flow.Record{record("ebpf", flow.EventOpen, testCookie, 0, 0)}
	netlink := []*flow.Record{record("netlink", flow.EventSample, testCookie+1, 0, 0)} // another flow
	for i := uint64(1); i <= 20; i++ {
		ebpf = append(ebpf, record("ebpf", flow.EventSample, testCookie, time.Duration(i)*50*time.Millisecond, i))
		netlink = append(netlink, record("netlink", flow.EventSample, testCookie, time.Duration(i)*50*time.Millisecond+10*time.Millisecond, i))
	}
	ebpf = append(ebpf, record("ebpf", flow.EventClose, testCookie, 1020*time.Millisecond, 20))
	writeJSONL(t, filepath.Join(dir, ebpfFile), ebpf)
	writeJSONL(t, filepath.Join(dir, netlinkFile), netlink)

	ip := iperf3.Result{}
	ip.Start.Connected = []iperf3.Connection{{Socket: testSocket, LocalHost: "10.0.0.1", LocalPort: 40000, RemoteHost: "10.0.0.2", RemotePort: 5201}}
	for i := range 5 {
		s := float64(i) * 0.2
		ip.Intervals = append(ip.Intervals, iperf3.Interval{Streams: []iperf3.Stream{{
			Socket: testSocket, Start: s, End: s + 0.2, Seconds: 0.2, Bytes: 500000, BitsPerSecond: 20e6,
			Retransmits: i64(1), SndCwnd: u64(testMSS * uint64(24+4*i)), RTT: u64(5200), RTTVar: u64(450), Sender: true,
		}}})
	}
	ip.End.Streams = []iperf3.EndStream{{Sender: iperf3.Total{Socket: testSocket, Bytes: 2500000, Sender: true}}}
	writeJSON(t, filepath.Join(dir, iperfFile), ip)

	writeJSON(t, filepath.Join(dir, reportFile), report.Report{
		Scenario: "tiny", Description: "a synthetic scenario", Kernel: "6.99.0-test", Started: testStart, Interval: "50ms",
		Streams: []report.Stream{{Name: testStream, Cookie: testCookie, Start: testStart, IperfSocket: testSocket,
			EBPFRecords: len(ebpf), NetlinkRecord: len(netlink) - 1}},
		Checks: []report.Check{
			{Stream: testStream, Metric: "rtt", Compared: "rtt compared", Value: 5200, Reference: 5200, Tolerance: 0.15,
				Rule: "median relative difference", Samples: 5, Pass: true},
			{Stream: testStream, Metric: "bytes", Compared: "bytes compared", Value: 2500001, Reference: 2400000,
				Diff: 0.0417, Tolerance: 0.01, Rule: "within the counts", Pass: false},
			{Stream: "elsewhere", Metric: "orphan_metric", Compared: "a check of no stream", Pass: true},
		},
	})
	return dir
}

func TestPlotScenario(t *testing.T) {
	dir := newScenario(t, "")
	var stdout, stderr bytes.Buffer
	if code := run([]string{dir}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d, stderr: %s", code, stderr.String())
	}
	out := filepath.Join(dir, plotsDir)
	index := readFile(t, filepath.Join(out, "index.html"))
	for _, m := range metrics {
		pngName, svgName := m.File+"-s1.png", m.File+"-s1.svg"
		f, err := os.Open(filepath.Join(out, pngName))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", pngName, err)
		} else if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 250 {
			t.Errorf("%s: %v is too small to read", pngName, b)
		}
		checkSVG(t, filepath.Join(out, svgName))
		for _, ref := range []string{`src="` + svgName + `"`, `href="` + pngName + `"`} {
			if !strings.Contains(index, ref) {
				t.Errorf("index.html lacks %s", ref)
			}
		}
	}
	for _, want := range []string{
		"tiny", "a synthetic scenario", "6.99.0-test", "10.0.0.1:40000-&gt;10.0.0.2:5201",
		`<tr class="pass"><td>rtt</td><td>rtt compared</td><td class="num">5200</td>`,
		`<tr class="FAIL"><td>bytes</td><td>bytes compared</td><td class="num">2500001</td><td class="num">2400000</td><td class="num">0.0417</td><td class="num">0.01</td><td>within the counts</td>`,
		"Other checks", "orphan_metric",
	} {
		if !strings.Contains(index, want) {
			t.Errorf("index.html lacks %q", want)
		}
	}
	if strings.Contains(index, "http") {
		t.Error("index.html refers to something outside plots/")
	}
	if !strings.Contains(stdout.String(), filepath.Join(out, "index.html")) {
		t.Errorf("stdout %q does not name index.html", stdout.String())
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkSVG checks that path is a well-formed XML document whose root is <svg>.
func checkSVG(t *testing.T, path string) {
	t.Helper()
	b := readFile(t, path)
	if !strings.HasPrefix(b, "<?xml") && !strings.HasPrefix(b, "<svg") {
		t.Errorf("%s: starts with %.20q, not <?xml or <svg", path, b)
	}
	d := xml.NewDecoder(strings.NewReader(b))
	root := ""
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Errorf("%s: not well-formed XML: %v", path, err)
			return
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Errorf("%s: root element %q, want svg", path, root)
	}
}

func TestParentDirectory(t *testing.T) {
	parent := t.TempDir()
	newScenario(t, filepath.Join(parent, "one"))
	newScenario(t, filepath.Join(parent, "two"))
	if err := os.Mkdir(filepath.Join(parent, "not-a-scenario"), 0o755); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{parent}, nil, &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d, stderr: %s", code, stderr.String())
	}
	for _, s := range []string{"one", "two"} {
		if _, err := os.Stat(filepath.Join(parent, s, plotsDir, "index.html")); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(parent, "not-a-scenario", plotsDir)); err == nil {
		t.Error("plotted a directory that holds no scenario")
	}
}

func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, dir string)
		want  []string
	}{
		{"missing iperf3.json", func(t *testing.T, dir string) { remove(t, dir, iperfFile) },
			[]string{iperfFile, "no such file"}},
		{"missing report.json", func(t *testing.T, dir string) { remove(t, dir, reportFile) },
			[]string{reportFile, "no such file"}},
		{"malformed ebpf line", func(t *testing.T, dir string) { appendLine(t, dir, ebpfFile, `{"time":`) },
			[]string{ebpfFile + ":23:"}},
		{"malformed netlink line", func(t *testing.T, dir string) { appendLine(t, dir, netlinkFile, `not json`) },
			[]string{netlinkFile + ":22:"}},
		{"iperf3 error field", func(t *testing.T, dir string) {
			write(t, dir, iperfFile, `{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}`)
		}, []string{iperfFile + ": iperf3 reported an error: unable to connect to server"}},
		{"iperf3 not JSON", func(t *testing.T, dir string) { write(t, dir, iperfFile, "Connecting to host 10.0.0.2\n") },
			[]string{iperfFile + ": not an iperf3 JSON report"}},
		{"report not JSON", func(t *testing.T, dir string) { write(t, dir, reportFile, "{") },
			[]string{reportFile + ": not a flowd validation report"}},
		{"report without streams", func(t *testing.T, dir string) { write(t, dir, reportFile, `{"scenario":"x"}`) },
			[]string{reportFile + ": report has no streams"}},
		{"stream not in netlink", func(t *testing.T, dir string) { write(t, dir, netlinkFile, "") },
			[]string{netlinkFile + ": no records with cookie 7", testStream}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newScenario(t, "")
			tc.spoil(t, dir)
			var stdout, stderr bytes.Buffer
			if code := run([]string{dir}, nil, &stdout, &stderr); code != 1 {
				t.Errorf("exit status %d, want 1", code)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("error %q lacks %q", stderr.String(), w)
				}
			}
			if !strings.Contains(stderr.String(), dir) {
				t.Errorf("error %q does not name the directory", stderr.String())
			}
		})
	}
}

func remove(t *testing.T, dir, name string) {
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, dir, name, s string) {
	if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func appendLine(t *testing.T, dir, name, line string) {
	write(t, dir, name, readFile(t, filepath.Join(dir, name))+line+"\n")
}

func TestUsage(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run(nil, nil, &stdout, &stderr); code != 2 {
		t.Errorf("no DIR: exit status %d, want 2", code)
	}
	if !strings.Contains(stderr.String(), "usage:") {
		t.Errorf("no usage in %q", stderr.String())
	}
	stderr.Reset()
	missing := filepath.Join(t.TempDir(), "nope")
	if code := run([]string{missing}, nil, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), missing) {
		t.Errorf("missing DIR: exit status %d, stderr %q", code, stderr.String())
	}
	stderr.Reset()
	empty := t.TempDir()
	if code := run([]string{empty}, nil, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no flowd output") ||
		!strings.Contains(stderr.String(), "no validation scenario") {
		t.Errorf("empty DIR: exit status %d, stderr %q", code, stderr.String())
	}
}

func TestStdinWithoutArgument(t *testing.T) {
	var in bytes.Buffer
	if err := (generated{Flows: 3, Samples: 4, Open: 3}).write(&in); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-o", out}, &in, &stdout, &stderr); code != 0 {
		t.Fatalf("records on standard input, no argument: exit status %d: %s", code, stderr.String())
	}
	if index := readFile(t, filepath.Join(out, "index.html")); !strings.Contains(index, "Read from standard input.") {
		t.Errorf("index.html does not name standard input as the source")
	}

	// A terminal on standard input: usage, not a wait for records.
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	defer tty.Close()
	stderr.Reset()
	if code := run(nil, tty, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), "usage:") {
		t.Errorf("a terminal on standard input, no argument: exit status %d, stderr %q; want 2 and the usage", code, stderr.String())
	}
}

func TestSeries(t *testing.T) {
	dir := newScenario(t, "")
	sc, err := loadScenario(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sc.stream(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.EBPF) != 22 || len(s.Netlink) != 20 {
		t.Fatalf("got %d ebpf and %d netlink records, want 22 and 20 (the other cookie left out)", len(s.EBPF), len(s.Netlink))
	}
	ss := extract(s)
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6*math.Max(1, math.Abs(want)) {
			t.Errorf("%s = %g, want %g", what, got, want)
		}
	}
	// 125000 bytes per 50 ms is 20 Mbit/s, drawn halfway between the samples.
	near("first slope time", ss.EBPF.SendRate[0].X, 0.025)
	near("slope", ss.EBPF.SendRate[1].Y, 20e6)
	near("delivery_rate", ss.EBPF.DeliveryRate[1].Y, 20e6)
	near("cwnd bytes", ss.EBPF.CwndBytes[1].Y, 21*testMSS)
	near("netlink time", ss.Netlink.RTT[0].X, 0.06)
	near("bytes acked", ss.EBPF.BytesAcked[20].Y, 1+125000*20)
	near("iperf3 cwnd segments", ss.Iperf.CwndSegs[2].Y, 32)
	near("iperf3 cwnd time", ss.Iperf.CwndSegs[2].X, 0.6)
	near("iperf3 cumulative retransmits", ss.Iperf.Retrans[5].Y, 5)
	near("iperf3 cumulative bytes", ss.Iperf.Bytes[5].Y, 2.5e6)
	if n := len(ss.Iperf.Throughput); n != 6 {
		t.Errorf("iperf3 throughput has %d points, want 6 (each interval's start and the last end)", n)
	}
	if ss.Iperf.MSS != "snd_mss 1448 bytes" {
		t.Errorf("MSS legend %q", ss.Iperf.MSS)
	}
}

// TestNetlinkCloseIsNoReading checks that a netlink close record, which
// repeats the counters of the dump before it, draws no slope to 0 at the
// end of the flow.
func TestNetlinkCloseIsNoReading(t *testing.T) {
	origin := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	c := newCollector(origin, origin, origin, 0)
	for i := range uint64(5) { // 1 MB and 1 s busy per second
		r := &flow.Record{Time: origin.Add(time.Duration(i) * time.Second), Backend: flow.BackendNetlink, Event: flow.EventSample, Cookie: 1}
		v := i
		if i == 4 { // the dump that no longer lists the socket: the last counters again
			r.Event, v = flow.EventClose, 3
		}
		r.Info.Set(flow.FieldBytesAcked, v*1e6)
		r.Info.Set(flow.FieldBusyTime, v*1e6)
		c.add(r)
	}
	s := c.series()
	for _, pts := range []struct {
		what string
		xys  plotter.XYs
		want float64
	}{{"sent", s.SendRate, 8e6}, {"busy", s.Busy, 100}} {
		if len(pts.xys) != 3 {
			t.Errorf("%s: %d points %v, want 3 (between the 4 dumps that read the flow)", pts.what, len(pts.xys), pts.xys)
		}
		for _, p := range pts.xys {
			if p.Y != pts.want {
				t.Errorf("%s: %g at %gs, want %g", pts.what, p.Y, p.X, pts.want)
			}
		}
	}
}
