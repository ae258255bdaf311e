package daemon

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/metrics/tcpstats"
)

// prometheusServer is a Prometheus server the test started.
type prometheusServer struct {
	base string // http://host:port
}

// startPrometheus starts Debian's prometheus on a free loopback port,
// scraping target every second, until the test ends.
func startPrometheus(t *testing.T, target string) *prometheusServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("skipping: no prometheus binary (Debian's prometheus package)")
	}
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: flowd
    static_configs:
      - targets: [%q]
`, target)
	path := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	var log bytes.Buffer
	cmd := exec.Command(bin, "--config.file="+path, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log.String())
		}
	})
	p := &prometheusServer{base: "http://" + addr}
	testutil.WaitFor(t, "prometheus to be ready", 30*time.Second, func() bool {
		resp, err := http.Get(p.base + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// query evaluates expr at time at and returns the values of the result
// vector.
func (p *prometheusServer) query(t *testing.T, expr string, at time.Time) []float64 {
	t.Helper()
	v := url.Values{"query": {expr}, "time": {strconv.FormatFloat(float64(at.UnixNano())/1e9, 'f', 3, 64)}}
	resp, err := http.Get(p.base + "/api/v1/query?" + v.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string
		Error  string
		Data   struct {
			ResultType string
			Result     []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body.Status != "success" {
		t.Fatalf("query %s: %s", expr, body.Error)
	}
	var out []float64
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("query %s: value %v", expr, r.Value)
		}
		out = append(out, f)
	}
	return out
}

// one evaluates expr at at and returns its only value, waiting for one.
func (p *prometheusServer) one(t *testing.T, expr string, at time.Time) float64 {
	t.Helper()
	var got []float64
	testutil.WaitFor(t, "a value of "+expr, 10*time.Second, func() bool {
		got = p.query(t, expr, at)
		return len(got) == 1
	})
	return got[0]
}

// TestPrometheus: a real Prometheus server scrapes flowd every second
// during a paced transfer; the rate it computes of the acked bytes, the
// median of the srtt histogram and the final counter agree with the
// records.
func TestPrometheus(t *testing.T) {
	tr := newTree(t)
	cfg := testConfig("ebpf")
	cfg.EBPF.Interval = 100 * time.Millisecond // counters move in small steps
	l := startLive(t, cfg, tr)
	prom := startPrometheus(t, l.addr)
	testutil.WaitFor(t, "a first scrape", 15*time.Second, func() bool {
		up := prom.query(t, `up{job="flowd"}`, time.Now())
		return len(up) == 1 && up[0] == 1
	})

	ln := testutil.Listen(t, tr.a, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, tr.b, ln)
	client := testutil.Cookie(t, p.Client)
	// 1 MiB every 50 ms: 20 MiB/s for 3 s.
	const chunk, every, chunks = 1 << 20, 50 * time.Millisecond, 60
	start := time.Now()
	for i := range chunks {
		time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
		p.Send(t, chunk)
	}
	end := time.Now()
	p.Quiesce(t)
	p.Client.Close()
	testutil.ReadEOF(t, p.Server)
	p.Server.Close()
	l.waitClosed(t, []string{"ebpf"}, client)

	sel := fmt.Sprintf(`{backend="ebpf",cgroup=%q}`, tr.relB)
	// The counter Prometheus holds at last is what the records say.
	rs := l.records(t)
	want := grown(rs, flow.FieldBytesAcked)["ebpf"][tr.idB]
	testutil.WaitFor(t, "the last scrape after the close", 10*time.Second, func() bool {
		got := prom.query(t, "flowd_tcp_bytes_acked_total"+sel, time.Now())
		return len(got) == 1 && got[0] == float64(want)
	})

	// rate() over 2 s in the middle of the transfer, against the records'
	// bytes acked over the same time.
	const window = 2 * time.Second
	at := start.Add((end.Sub(start) + window) / 2)
	rate := prom.one(t, fmt.Sprintf("rate(flowd_tcp_bytes_acked_total%s[%s])", sel, promDuration(window)), at)
	acked := func(at time.Time) (v uint64) {
		for _, r := range rs {
			if r.Backend == "ebpf" && r.Cookie == client && !r.Time.After(at) {
				v, _ = r.Info.Get(flow.FieldBytesAcked)
			}
		}
		return v
	}
	fromRecords := float64(acked(at)-acked(at.Add(-window))) / window.Seconds()
	paced := float64(chunk) / every.Seconds()
	t.Logf("rate: Prometheus %.3g B/s, the records %.3g B/s, paced at %.3g B/s", rate, fromRecords, paced)
	if rate < 0.75*fromRecords || rate > 1.25*fromRecords {
		t.Errorf("Prometheus's rate %.4g B/s is not within 25%% of the records' %.4g B/s", rate, fromRecords)
	}
	if fromRecords < 0.5*paced || fromRecords > 1.5*paced {
		t.Errorf("the records' rate %.4g B/s is far from the paced %.4g B/s", fromRecords, paced)
	}

	// The median of the srtt histogram falls in the bucket of the records'
	// median srtt (sample and close records, as the histogram observes).
	var srtts []uint64
	for _, r := range rs {
		if v, ok := r.Info.Get(flow.FieldRTT); ok && v > 0 && r.Backend == "ebpf" && r.CgroupID == tr.idB &&
			(r.Event == flow.EventSample || r.Event == flow.EventClose) {
			srtts = append(srtts, v)
		}
	}
	slices.Sort(srtts)
	if len(srtts) < 5 {
		t.Fatalf("%d srtt samples in the records", len(srtts))
	}
	median := srtts[(len(srtts)-1)/2]
	lo, hi := 0.0, float64(tcpstats.RTTBounds[len(tcpstats.RTTBounds)-1])/1e6
	for i, b := range tcpstats.RTTBounds {
		if median <= b {
			hi = float64(b) / 1e6
			if i > 0 {
				lo = float64(tcpstats.RTTBounds[i-1]) / 1e6
			}
			break
		}
	}
	q := prom.one(t, fmt.Sprintf("histogram_quantile(0.5, sum by (le) (flowd_tcp_srtt_seconds_bucket%s))", sel), time.Now())
	t.Logf("median srtt: Prometheus %.3g s, the records %d µs (%d samples)", q, median, len(srtts))
	if q < lo || q > hi {
		t.Errorf("histogram_quantile(0.5) = %g s, want in the records' median's bucket (%g, %g]", q, lo, hi)
	}
}

// promDuration writes d as a PromQL duration in milliseconds.
func promDuration(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) + "ms" }
