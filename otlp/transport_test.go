package otlp

import (
	"cmp"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

func TestGRPCErrorClassification(t *testing.T) {
	throttled, err := status.New(codes.ResourceExhausted, "slow down").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		err       error
		retryable bool
		after     time.Duration
	}{
		{status.Error(codes.Unavailable, "down"), true, 0},
		{status.Error(codes.DeadlineExceeded, "slow"), true, 0},
		{status.Error(codes.ResourceExhausted, "too large"), false, 0},
		{throttled.Err(), true, 3 * time.Second},
		{status.Error(codes.InvalidArgument, "bad"), false, 0},
		{status.Error(codes.Unauthenticated, "who"), false, 0},
		{status.Error(codes.Unimplemented, "no logs"), false, 0},
	} {
		e := grpcError(tc.err)
		if e.retryable != tc.retryable || e.after != tc.after {
			t.Errorf("%v: retryable %v after %s, want %v after %s", tc.err, e.retryable, e.after, tc.retryable, tc.after)
		}
	}
}

// TestGRPCReconnectsOnRetry exports to a collector that is down, then
// back: with gRPC's own wait before it connects again made an hour long,
// the next export still reaches the collector.
func TestGRPCReconnectsOnRetry(t *testing.T) {
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	col.Kill()
	cfg := otlpconfig.Default()
	cfg.Endpoint = col.GRPC
	cfg.Retry.InitialInterval, cfg.Retry.MaxInterval = time.Hour, time.Hour
	tr, err := newGRPC(&cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	export := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req := &request{done: func(*request) {}}
		req.refs.Store(1)
		_, err := tr.export(ctx, signalLogs, req)
		return err
	}
	if err := export(); err == nil {
		t.Fatal("export to a stopped collector succeeded")
	}
	// Still down: the retry fails with the cause, not a timeout.
	if err := export(); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("export to a stopped collector: %v, want connection refused", err)
	}
	col.Start()
	if err := export(); err != nil {
		t.Errorf("export after the collector came back: %v", err)
	}
}

// TestProtocolMismatch exports with each protocol to a receiver of the
// other: the error says to check output.otlp.protocol, which the errors of
// gRPC and net/http do not.
func TestProtocolMismatch(t *testing.T) {
	httpServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	defer httpServer.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	go grpcServer.Serve(ln)
	defer grpcServer.Stop()

	// A gRPC receiver answers an HTTP/1.1 request with HTTP/2 frames, or
	// with a reset when it closes on a body it did not read (the large
	// request makes that likely).
	for _, tc := range []struct {
		protocol otlpconfig.Protocol
		endpoint string
		body     int
	}{
		{otlpconfig.ProtocolGRPC, strings.TrimPrefix(httpServer.URL, "http://"), 0},
		{otlpconfig.ProtocolHTTP, ln.Addr().String(), 0},
		{otlpconfig.ProtocolHTTP, ln.Addr().String(), 4 << 20},
	} {
		cfg := otlpconfig.Default()
		cfg.Protocol, cfg.Endpoint = tc.protocol, tc.endpoint
		tr, err := newTransport(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		req := &request{done: func(*request) {}, body: make([]byte, tc.body)}
		req.refs.Store(1)
		_, err = tr.export(ctx, signalLogs, req)
		cancel()
		tr.close()
		if err == nil || !strings.Contains(err.Error(), "check output.otlp.protocol") {
			t.Errorf("%s (%d bytes) to a receiver of the other protocol: %v, want a hint to check output.otlp.protocol", tc.protocol, tc.body, err)
		}
	}
}

// TestNoProtocolHint: failures that say nothing of the protocol get no
// hint: a refused connection, and a reset from an OTLP/HTTP receiver that
// has answered before.
func TestNoProtocolHint(t *testing.T) {
	refused := testutil.FreeLoopbackAddr(t)

	var requests atomic.Int32
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if requests.Add(1) == 1 {
			w.WriteHeader(http.StatusOK)
			return
		}
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		conn.(*net.TCPConn).SetLinger(0) // close with a reset
		conn.Close()
	}))
	defer server.Close()

	for _, tc := range []struct {
		name     string
		endpoint string
		exports  int
	}{
		{"refused", refused, 1},
		{"reset after an answer", strings.TrimPrefix(server.URL, "http://"), 2},
	} {
		cfg := otlpconfig.Default()
		cfg.Protocol, cfg.Endpoint = otlpconfig.ProtocolHTTP, tc.endpoint
		tr, err := newTransport(&cfg)
		if err != nil {
			t.Fatal(err)
		}
		for range tc.exports {
			req := &request{done: func(*request) {}}
			req.refs.Store(1)
			_, err = tr.export(context.Background(), signalLogs, req)
		}
		tr.close()
		if err == nil || strings.Contains(err.Error(), "output.otlp.protocol") {
			t.Errorf("%s: %v, want an error without a protocol hint", tc.name, err)
		}
	}
}

// response returns an ExportLogsServiceResponse with a partial success.
func response(rejected int64, message string) []byte {
	var ps []byte
	ps = protowire.AppendTag(ps, 1, protowire.VarintType)
	ps = protowire.AppendVarint(ps, uint64(rejected))
	ps = protowire.AppendTag(ps, 2, protowire.BytesType)
	ps = protowire.AppendString(ps, message)
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	return protowire.AppendBytes(b, ps)
}

// rpcStatus returns a google.rpc.Status with code and message.
func rpcStatus(code codes.Code, message string) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(code))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendString(b, message)
}

// TestHTTPResponses drives the exporter against an OTLP/HTTP endpoint that
// answers as the specification allows: throttling with Retry-After, a
// partial success, a permanent error with a google.rpc.Status body.
func TestHTTPResponses(t *testing.T) {
	for _, tc := range []struct {
		name      string
		responses []func(w http.ResponseWriter)
		exported  uint64
		drops     Drops
		requests  uint64
		logged    string
		giveUp    time.Duration // retry.max_elapsed_time
		atLeast   bool          // requests is a minimum: retries depend on jitter
	}{
		{
			name: "throttled, then accepted",
			responses: []func(w http.ResponseWriter){
				func(w http.ResponseWriter) {
					w.Header().Set("Retry-After", "1")
					w.WriteHeader(http.StatusTooManyRequests)
				},
				func(w http.ResponseWriter) { w.WriteHeader(http.StatusOK) },
			},
			exported: 10, requests: 2, logged: "429", giveUp: 5 * time.Second,
		},
		{
			name: "partial success",
			responses: []func(w http.ResponseWriter){
				func(w http.ResponseWriter) { w.Write(response(3, "three too old")) },
			},
			exported: 7, drops: Drops{Rejected: 3}, requests: 1, logged: "three too old",
		},
		{
			name: "bad request",
			responses: []func(w http.ResponseWriter){
				func(w http.ResponseWriter) {
					w.WriteHeader(http.StatusBadRequest)
					w.Write(rpcStatus(codes.InvalidArgument, "no such field"))
				},
			},
			drops: Drops{ExportFailed: 10}, requests: 1, logged: "no such field",
		},
		{
			name: "unavailable until retries run out",
			responses: []func(w http.ResponseWriter){
				func(w http.ResponseWriter) { w.WriteHeader(http.StatusServiceUnavailable) },
			},
			drops: Drops{ExportFailed: 10}, requests: 2, atLeast: true, logged: "503", giveUp: 90 * time.Millisecond,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			var firstAt, secondAt atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/logs" || r.Header.Get("Content-Type") != "application/x-protobuf" || r.Header.Get("Authorization") != "Bearer t" {
					t.Errorf("request %s %s %v", r.Method, r.URL, r.Header)
				}
				io.Copy(io.Discard, r.Body)
				n := int(calls.Add(1))
				switch n {
				case 1:
					firstAt.Store(time.Now().UnixNano())
				case 2:
					secondAt.Store(time.Now().UnixNano())
				}
				tc.responses[min(n, len(tc.responses))-1](w)
			}))
			defer srv.Close()

			cfg := otlpconfig.Default()
			cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
			cfg.Protocol = otlpconfig.ProtocolHTTP
			cfg.Headers = map[string]string{"Authorization": "Bearer t"}
			cfg.ExportInterval = 10 * time.Millisecond
			cfg.Retry.InitialInterval, cfg.Retry.MaxInterval = 20*time.Millisecond, 40*time.Millisecond
			cfg.Retry.MaxElapsedTime = cmp.Or(tc.giveUp, time.Second)
			log, hook := logtest.NewNullLogger()
			e := exportTen(t, cfg, Options{Log: log})

			s := e.Stats()
			if s.Exported != tc.exported || s.Dropped != tc.drops || s.Requests != tc.requests && !(tc.atLeast && s.Requests > tc.requests) {
				t.Errorf("stats %+v: want %d exported, drops %+v, %d requests", s, tc.exported, tc.drops, tc.requests)
			}
			if tc.name == "throttled, then accepted" && secondAt.Load() != 0 {
				if gap := time.Duration(secondAt.Load() - firstAt.Load()); gap < time.Second {
					t.Errorf("retried %s after a Retry-After of 1s", gap)
				}
			}
			var logged []string
			for _, entry := range hook.AllEntries() {
				s, _ := entry.String()
				logged = append(logged, s)
			}
			if all := strings.Join(logged, ""); !strings.Contains(all, tc.logged) {
				t.Errorf("log %q does not mention %q", all, tc.logged)
			}
		})
	}
}

// TestRetriesUntilMaxElapsedTime has a receiver fail the first attempt
// and accept the next: with a first wait (0.5-1.5 s) longer than all of
// retry.max_elapsed_time, the request is still retried once, at
// max_elapsed_time, rather than dropped at once.
func TestRetriesUntilMaxElapsedTime(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()

	cfg := otlpconfig.Default()
	cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	cfg.Protocol = otlpconfig.ProtocolHTTP
	cfg.ExportInterval = 10 * time.Millisecond
	cfg.Retry.InitialInterval, cfg.Retry.MaxInterval = time.Second, time.Second
	cfg.Retry.MaxElapsedTime = 200 * time.Millisecond
	e := exportTen(t, cfg, Options{})
	if s := e.Stats(); s.Exported != 10 || s.Dropped != (Drops{}) || s.Requests != 2 {
		t.Errorf("stats %+v: want the 10 records exported by a second request, none dropped", s)
	}
}

func TestParseResponse(t *testing.T) {
	p, err := parseResponse(response(5, "why"))
	if err != nil || p.rejected != 5 || p.message != "why" {
		t.Errorf("got %+v, %v", p, err)
	}
	if p, err := parseResponse(nil); err != nil || p != (partial{}) {
		t.Errorf("empty response: %+v, %v", p, err)
	}
	if _, err := parseResponse([]byte{0x0a, 0x05, 0x08}); err == nil {
		t.Error("truncated response: no error")
	}
	if got := statusMessage(rpcStatus(codes.InvalidArgument, "bad field")); got != "bad field" {
		t.Errorf("status message %q", got)
	}
	if got := statusMessage([]byte("plain text error")); got != "plain text error" {
		t.Errorf("text body %q", got)
	}
	if !errors.Is(&exportError{err: io.EOF}, io.EOF) {
		t.Error("exportError does not unwrap")
	}
}

// TestHTTPKeepsConnections sends rounds of concurrent_requests requests at
// once over http/protobuf: the later rounds reuse the first round's
// connections rather than dial new ones.
func TestHTTPKeepsConnections(t *testing.T) {
	const senders, rounds, batch = 6, 3, 10
	var dialled atomic.Int32
	arrived, release := make(chan struct{}, senders), make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		<-release // until every sender holds a request, and so a connection
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dialled.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()

	cfg := otlpconfig.Default()
	cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	cfg.Protocol = otlpconfig.ProtocolHTTP
	cfg.BatchSize, cfg.ConcurrentRequests = batch, senders
	cfg.ExportInterval = time.Hour // full batches only
	e, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	r := flow.Record{Time: time.Now(), Backend: "ebpf", Event: flow.EventSample}
	for round := range rounds {
		for range senders * batch {
			e.Write(&r)
		}
		for range senders {
			select {
			case <-arrived:
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: fewer than %d requests at once", round, senders)
			}
		}
		for range senders {
			release <- struct{}{}
		}
		want := uint64((round + 1) * senders * batch)
		testutil.WaitFor(t, "the round's records exported", 10*time.Second, func() bool { return e.Stats().Exported == want })
	}
	if n := dialled.Load(); n != senders {
		t.Errorf("%d connections dialled for %d rounds of %d requests at once, want %d", n, rounds, senders, senders)
	}
}

// exportTen writes 10 samples to a new exporter of cfg, waits until none
// is queued, and closes it.
func exportTen(t *testing.T, cfg otlpconfig.Config, opts Options) *Exporter {
	t.Helper()
	e, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	r := flow.Record{Time: time.Now(), Backend: "ebpf", Event: flow.EventSample}
	for range 10 {
		e.Write(&r)
	}
	for e.Stats().Queued > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	e.Close()
	return e
}
