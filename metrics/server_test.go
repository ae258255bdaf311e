package metrics

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics/tcpstats"
)

// serverChildEnv makes the test binary a metrics server for
// TestIdleClients (see TestMain), with the timeouts it holds.
const serverChildEnv = "FLOWD_METRICS_TEST_SERVER"

// childOptions are the limits of the server TestIdleClients runs.
var childOptions = ServerOptions{
	ReadHeaderTimeout: time.Second,
	ReadTimeout:       2 * time.Second,
	WriteTimeout:      2 * time.Second,
	IdleTimeout:       2 * time.Second,
	MaxConns:          32,
}

func TestMain(m *testing.M) {
	if os.Getenv(serverChildEnv) != "" {
		serveChild()
		return
	}
	os.Exit(m.Run())
}

// serveChild serves metrics on a free loopback port, which it prints,
// until its standard input is closed.
func serveChild() {
	m, err := New("child")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	log := logrus.New()
	log.SetOutput(os.Stderr)
	srv, err := m.Listen("127.0.0.1:0", childOptions, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(srv.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// listen serves m on a free loopback port until the test ends.
func listen(t *testing.T, m *Metrics, opts ServerOptions) (base string, hook *logtest.Hook) {
	t.Helper()
	log, hook := logtest.NewNullLogger()
	srv, err := m.Listen("127.0.0.1:0", opts, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return "http://" + srv.Addr().String(), hook
}

// get fetches url without letting the transport unzip it, and returns the
// response and its body, unzipped when it came gzipped.
func get(t *testing.T, url string, gzipped bool) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if gzipped {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := io.Reader(resp.Body)
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestServer: /metrics holds flowd's own metrics and the TCP metrics, in
// the text format, gzipped when asked; / links /metrics and /healthz;
// other paths are 404; nothing is served after Shutdown.
func TestServer(t *testing.T) {
	m := newMetrics(t)
	if err := m.Sink(flow.SinkFunc(func(*flow.Record) error { return nil })).Write(&flow.Record{Backend: "ebpf", Event: flow.EventSample}); err != nil {
		t.Fatal(err)
	}
	m.RegisterTCP(filledAggregator(t, tcpstats.ByRemotePort, "a", "b"), tcpstats.ByRemotePort)
	log, hook := logtest.NewNullLogger()
	srv, err := m.Listen("127.0.0.1:0", ServerOptions{}, log)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + srv.Addr().String()

	for _, gzipped := range []bool{false, true} {
		resp, body := get(t, base+Path, gzipped)
		if resp.StatusCode != http.StatusOK || (resp.Header.Get("Content-Encoding") == "gzip") != gzipped {
			t.Errorf("GET %s (gzip %v): %s, Content-Encoding %q", Path, gzipped, resp.Status, resp.Header.Get("Content-Encoding"))
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Errorf("Content-Type %q", ct)
		}
		for _, want := range []string{
			`flowd_records_total{backend="ebpf",event="sample"} 1`,
			`flowd_build_info{version="1.2.3"} 1`,
			"flowd_output_errors_total 0",
			`flowd_tcp_bytes_acked_total{backend="ebpf",cgroup="a"} `,
			`flowd_tcp_remote_flows_open{backend="netlink",remote_port="443"} `,
			`flowd_flow_srtt_seconds{backend="`,
			"go_goroutines ",
			"process_cpu_seconds_total ",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("GET %s (gzip %v) lacks %q", Path, gzipped, want)
			}
		}
		// The whole page parses, with no family twice.
		p := expfmt.NewTextParser(model.LegacyValidation)
		if _, err := p.TextToMetricFamilies(strings.NewReader(body)); err != nil {
			t.Errorf("GET %s (gzip %v): %v", Path, gzipped, err)
		}
	}

	resp, body := get(t, base+"/", false)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `href="/metrics"`) || !strings.Contains(body, `href="/healthz"`) {
		t.Errorf("GET /: %s\n%s", resp.Status, body)
	}
	if resp, _ := get(t, base+"/nothing", false); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nothing: %s", resp.Status)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: time.Second}
	if resp, err := client.Get(base + Path); err == nil {
		resp.Body.Close()
		t.Errorf("GET %s after Shutdown succeeded", Path)
	}
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("logged %s: %s", e.Level, e.Message)
		}
	}
}

// TestHealthz: 503 while starting, 200 while every backend runs, 503 with
// the reason while one waits for its cgroup, once one failed, or when
// flowd stops; flowd_backend_up follows.
func TestHealthz(t *testing.T) {
	m := newMetrics(t)
	base, _ := listen(t, m, ServerOptions{})
	check := func(wantCode int, wantReason string, wantUp map[string]string) {
		t.Helper()
		resp, body := get(t, base+HealthPath, false)
		if resp.StatusCode != wantCode || !strings.Contains(body, wantReason) {
			t.Errorf("GET %s: %d %q, want %d and %q", HealthPath, resp.StatusCode, body, wantCode, wantReason)
		}
		_, metrics := get(t, base+Path, false)
		for backend, up := range wantUp {
			if want := `flowd_backend_up{backend="` + backend + `"} ` + up + "\n"; !strings.Contains(metrics, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		if len(wantUp) == 0 && strings.Contains(metrics, "flowd_backend_up{") {
			t.Error("flowd_backend_up before any backend runs")
		}
	}
	h := m.Health()
	check(http.StatusServiceUnavailable, "starting", nil)
	h.Running("ebpf", "netlink")
	check(http.StatusOK, "ok: ebpf, netlink running", map[string]string{"ebpf": "1", "netlink": "1"})
	h.Waiting("netlink", "cgroup /x removed; waiting for a cgroup at that path")
	check(http.StatusServiceUnavailable, "netlink backend: cgroup /x removed; waiting for a cgroup at that path", map[string]string{"ebpf": "1", "netlink": "0"})
	h.Waiting("netlink", "")
	check(http.StatusOK, "ok: ebpf, netlink running", map[string]string{"ebpf": "1", "netlink": "1"})
	h.Failed("ebpf", errors.New("reading ring buffer: bad file descriptor"))
	h.Waiting("ebpf", "") // a failure stays
	h.Stopping()
	check(http.StatusServiceUnavailable, "stopping; ebpf backend: reading ring buffer: bad file descriptor", map[string]string{"ebpf": "0", "netlink": "0"})
}

// TestConnectionLimit: connections over MaxConns are closed at once, with
// a reset, and counted; a connection that closes gives its place back.
func TestConnectionLimit(t *testing.T) {
	m := newMetrics(t)
	base, _ := listen(t, m, ServerOptions{MaxConns: 2})
	addr := strings.TrimPrefix(base, "http://")
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	// The third is reset as soon as the server accepts it: connecting
	// fails, or reading.
	c, err := net.Dial("tcp", addr)
	if err == nil {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the connection over the limit: %v, want a reset", err)
	}
	// One of the held ones asks and closes: a place is free again.
	fmt.Fprintf(held[0], "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", HealthPath)
	resp, err := http.ReadResponse(bufio.NewReader(held[0]), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The scrape may come before the server has freed that place and be
	// rejected as well: the counter holds those too.
	var failed int
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: time.Second}).Get(base + Path)
		if err != nil {
			if time.Now().After(deadline) {
				t.Fatalf("no scrape got through: %v", err)
			}
			failed++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var n int
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "flowd_http_rejected_connections_total "); ok {
				n, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		if n != 1+failed {
			t.Errorf("flowd_http_rejected_connections_total %d, want 1 and the %d scrapes that failed", n, failed)
		}
		return
	}
}

// waitForText waits until a scrape of base holds want; the scrape itself
// needs a free place, which it may have to wait for.
func waitForText(t *testing.T, base, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := (&http.Client{Timeout: time.Second}).Get(base + Path)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if last = string(b); strings.Contains(last, want) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q in the metrics:\n%s", want, last)
}

// TestIdleClients opens 10,000 connections to a metrics server in another
// process, half of them idle from the start, half idle after a request:
// the server's memory and descriptors stay bounded, and every connection
// is closed, those over the limit at once, the others once their timeout
// (childOptions) passes.
func TestIdleClients(t *testing.T) {
	const clients = 10_000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < clients+500 {
		t.Skipf("skipping: %d connections need a file descriptor limit above %d (have %d)", clients, clients+500, lim.Cur)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), serverChildEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("server process: %v", err)
		}
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the server's address: %v", err)
	}
	addr := strings.TrimSpace(line)
	base := "http://" + addr
	pid := cmd.Process.Pid
	waitForText(t, base, "flowd_http_rejected_connections_total 0\n") // the server has served once
	rss0, fds0 := rssAndFDs(t, pid)

	conns := make([]net.Conn, clients) // nil: reset while connecting
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < clients; i += 8 {
				c, err := net.Dial("tcp", addr)
				if errors.Is(err, syscall.ECONNRESET) {
					continue
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				if i%2 == 1 { // keep-alive: one request, then idle
					fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", HealthPath)
				}
				conns[i] = c
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("connecting: %v", err)
	default:
	}
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	rss1, fds1 := rssAndFDs(t, pid)
	t.Logf("server: RSS %d -> %d KiB, fds %d -> %d, with %d connections", rss0>>10, rss1>>10, fds0, fds1, clients)
	if grew := rss1 - rss0; grew > 20<<20 {
		t.Errorf("the server's RSS grew by %d MiB with %d idle clients", grew>>20, clients)
	}
	if fds1 > fds0+childOptions.MaxConns+4 {
		t.Errorf("the server holds %d fds with %d idle clients, %d before (limit %d connections)", fds1, clients, fds0, childOptions.MaxConns)
	}

	// Every connection ends: a reset over the limit, else an end of file
	// after the response (if it asked) and the timeout.
	var reset, answered, closed int
	deadline := time.Now().Add(childOptions.IdleTimeout + childOptions.ReadHeaderTimeout + 10*time.Second)
	for i, c := range conns {
		if c == nil {
			reset++
			continue
		}
		_ = c.SetReadDeadline(deadline)
		b, err := io.ReadAll(c)
		switch {
		case errors.Is(err, syscall.ECONNRESET):
			reset++
		case err != nil:
			t.Fatalf("connection %d still open: %v", i, err)
		default:
			closed++
			if strings.HasPrefix(string(b), "HTTP/1.1 ") {
				answered++
			}
		}
	}
	t.Logf("%d connections reset at once, %d closed by a timeout (%d after a response)", reset, closed, answered)
	if closed < childOptions.MaxConns || reset+closed != clients {
		t.Errorf("%d reset, %d closed by a timeout; want all %d, at least %d of them served", reset, closed, clients, childOptions.MaxConns)
	}
	_, fds2 := rssAndFDs(t, pid)
	if fds2 > fds0+2 {
		t.Errorf("the server holds %d fds after every client left, %d before", fds2, fds0)
	}
	_, body := get(t, base+Path, false)
	_, after, _ := strings.Cut(body, "\nflowd_http_rejected_connections_total ")
	value, _, _ := strings.Cut(after, "\n")
	if n, err := strconv.Atoi(value); err != nil || n < reset || n > clients {
		t.Errorf("flowd_http_rejected_connections_total %q, want %d to %d", value, reset, clients)
	}
}

// rssAndFDs returns the resident memory (bytes) and the open descriptors
// of process pid.
func rssAndFDs(t *testing.T, pid int) (rss int64, fds int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			rss = kb << 10
		}
	}
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return rss, len(entries)
}

// TestPromtool: promtool check metrics passes on a scrape with the TCP
// metrics of every aggregation and flowd's own.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("skipping: promtool (Debian's prometheus package) is not installed")
	}
	m := newMetrics(t)
	s := m.Sink(flow.SinkFunc(func(*flow.Record) error { return nil }))
	if err := s.Write(&flow.Record{Time: time.Now(), Backend: "ebpf", Event: flow.EventOpen}); err != nil {
		t.Fatal(err)
	}
	m.AddDrops("ebpf", 3)
	m.SetUnread("ebpf", 4096, 1<<22)
	m.AddDumps("netlink", []time.Duration{time.Millisecond, 3 * time.Millisecond}, 1)
	m.SetFlows("netlink", 7)
	m.Health().Running("ebpf", "netlink")
	m.RegisterTCP(filledAggregator(t, tcpstats.ByRemotePrefix, "system.slice/a.service", "b"), tcpstats.ByRemotePrefix)
	base, _ := listen(t, m, ServerOptions{})
	_, body := get(t, base+Path, true)
	path := filepath.Join(t.TempDir(), "metrics.txt")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = f
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
