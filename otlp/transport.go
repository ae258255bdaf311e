package otlp

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/encoding/gzip" // registers the gzip compressor
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/flowd/flowd/otlp/otlpconfig"
)

// A transport sends one encoded export request of a signal and returns
// what the receiver rejected of it (partial success). It must be safe for
// concurrent use.
type transport interface {
	export(ctx context.Context, sig signal, req *request) (partial, error)
	close() error
}

// signal is what a request carries: records (an ExportLogsServiceRequest)
// or the TCP metrics (an ExportMetricsServiceRequest). Both go over one
// connection.
type signal int

const (
	signalLogs signal = iota
	signalMetrics
	numSignals
)

func (s signal) String() string { return [...]string{"logs", "metrics"}[s] }

// partial is a receiver's partial success: the records or data points it
// rejected and why.
type partial struct {
	rejected int64
	message  string
}

// exportError is a failed export: retryable when the OTLP specification
// calls the failure transient, after at least the delay the receiver asked
// for, if any.
type exportError struct {
	err       error
	retryable bool
	after     time.Duration // the receiver's RetryInfo or Retry-After; 0 = none
}

func (e *exportError) Error() string { return e.err.Error() }
func (e *exportError) Unwrap() error { return e.err }

// request is one encoded request. Its bytes are reused for a later batch
// once no attempt to send it holds them any more: the transports take a
// reference for each attempt (hold) and give it back when they no longer
// read the bytes, which may be after export returned (gRPC writes
// asynchronously).
type request struct {
	buf     []byte // header room, then the encoded records
	body    []byte // the framed request (a subslice of buf) or, gzipped, of zipped
	zipped  bytes.Buffer
	records int
	refs    atomic.Int32
	done    func(*request) // called when the last reference is released
}

func (r *request) hold() { r.refs.Add(1) }

func (r *request) release() {
	if r.refs.Add(-1) == 0 {
		r.done(r)
	}
}

// requestBody is the body of one HTTP attempt; net/http closes it, maybe
// after Do returned.
type requestBody struct {
	bytes.Reader
	req    *request
	closed atomic.Bool
}

func (b *requestBody) Close() error {
	if b.closed.CompareAndSwap(false, true) {
		b.req.release()
	}
	return nil
}

// Get and Put make request the mem.BufferPool of the gRPC buffer of an
// attempt, so that gRPC's release of it releases the request.
func (r *request) Get(int) *[]byte { panic("otlp: request is not a buffer pool") }
func (r *request) Put(*[]byte)     { r.release() }

// grpcMethods are the gRPC methods of the signals.
var grpcMethods = [numSignals]string{
	signalLogs:    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
	signalMetrics: "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}

const userAgent = "flowd"

// newTransport returns the transport cfg configures.
func newTransport(cfg *otlpconfig.Config) (transport, error) {
	tlsConfig, err := cfg.TLS.Load()
	if err != nil {
		return nil, err
	}
	if cfg.Protocol == otlpconfig.ProtocolHTTP {
		return newHTTP(cfg, tlsConfig), nil
	}
	return newGRPC(cfg, tlsConfig)
}

// grpcTransport sends requests over gRPC with a codec that passes the
// encoded bytes through.
type grpcTransport struct {
	conn *grpc.ClientConn
	md   metadata.MD
	opts []grpc.CallOption
}

func newGRPC(cfg *otlpconfig.Config, tlsConfig *tls.Config) (*grpcTransport, error) {
	creds := insecure.NewCredentials()
	if tlsConfig != nil {
		creds = credentials.NewTLS(tlsConfig)
	}
	// NewClient connects lazily: a collector that is not up yet is not an
	// error here but a retryable one on the first export.
	conn, err := grpc.NewClient(cfg.Endpoint,
		grpc.WithTransportCredentials(creds),
		grpc.WithUserAgent(userAgent),
		// Calls fail at once while the connection is down, so the channel
		// must reconnect at the pace of the retries: gRPC's own backoff
		// grows to 2 minutes, longer than a request is retried.
		grpc.WithConnectParams(connectParams(cfg)),
		// Requests are a megabyte or so: writing them through a 1 MiB
		// buffer, with windows that hold a few, costs much less system
		// time than gRPC's 32 KiB buffer and 64 KiB windows
		// (docs/performance.md).
		grpc.WithWriteBufferSize(1<<20),
		grpc.WithInitialWindowSize(4<<20),
		grpc.WithInitialConnWindowSize(8<<20),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(passthroughCodec{})))
	if err != nil {
		return nil, fmt.Errorf("creating gRPC client for %s: %w", cfg.Endpoint, err)
	}
	t := &grpcTransport{conn: conn, md: metadata.MD{}}
	for name, value := range cfg.Headers {
		t.md.Set(strings.ToLower(name), value)
	}
	if cfg.Compression == otlpconfig.CompressionGzip {
		t.opts = append(t.opts, grpc.UseCompressor("gzip"))
	}
	return t, nil
}

// connectParams bounds the waits between connection attempts by the
// retries' intervals.
func connectParams(cfg *otlpconfig.Config) grpc.ConnectParams {
	b := backoff.DefaultConfig
	b.BaseDelay = cfg.Retry.InitialInterval
	b.MaxDelay = cfg.Retry.MaxInterval
	return grpc.ConnectParams{Backoff: b, MinConnectTimeout: cfg.Timeout}
}

// reconnectWait bounds how long a retry waits for the connection it
// started before it is sent: short, so that retries within a push of the
// metrics still fit; a connection that takes longer serves the next one.
const reconnectWait = 100 * time.Millisecond

func (t *grpcTransport) export(ctx context.Context, sig signal, req *request) (partial, error) {
	if len(t.md) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, t.md)
	}
	if t.conn.GetState() == connectivity.TransientFailure {
		// The channel fails calls at once until its own next attempt to
		// connect, which may come long after the receiver is back: a retry
		// connects now, so that export resumes at the first retry after.
		// The state leaves TransientFailure only for Ready: past a short
		// wait, the call fails at once with the attempt's error.
		t.conn.ResetConnectBackoff()
		wait, cancel := context.WithTimeout(ctx, reconnectWait)
		t.conn.WaitForStateChange(wait, connectivity.TransientFailure)
		cancel()
	}
	var resp []byte
	if err := t.conn.Invoke(ctx, grpcMethods[sig], req, &resp, t.opts...); err != nil {
		return partial{}, grpcError(err)
	}
	return parseResponse(resp)
}

func (t *grpcTransport) close() error { return t.conn.Close() }

// grpcError classifies a failed call as the OTLP specification does.
func grpcError(err error) *exportError {
	s := status.Convert(err)
	e := &exportError{err: fmt.Errorf("gRPC %s: %s%s", s.Code(), s.Message(), protocolHint(s.Message(), otlpconfig.ProtocolHTTP))}
	for _, d := range s.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.RetryDelay != nil {
			e.after = info.RetryDelay.AsDuration()
		}
	}
	switch s.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Aborted, codes.OutOfRange, codes.Unavailable, codes.DataLoss:
		e.retryable = true
	case codes.ResourceExhausted:
		// Retryable only when the server says when: otherwise it may be a
		// request too large, which no retry mends.
		e.retryable = e.after > 0
	}
	return e
}

// protocolHint returns a hint for an error that shows the receiver speaks
// the other protocol, other (an HTTP/1.1 answer to gRPC's HTTP/2, or
// HTTP/2 frames read as an HTTP/1.1 response); those errors name neither
// the cause nor the key, and a retry never mends them.
func protocolHint(msg string, other otlpconfig.Protocol) string {
	if strings.Contains(msg, "looked like an HTTP/1.1 header") || strings.Contains(msg, "malformed HTTP response") {
		return otherProtocolHint(other)
	}
	return ""
}

func otherProtocolHint(other otlpconfig.Protocol) string {
	return fmt.Sprintf(" (the receiver may speak %s: check output.otlp.protocol and the port)", other)
}

// passthroughCodec hands gRPC a request's encoded bytes as they are, and
// returns the response's bytes for parseResponse.
type passthroughCodec struct{}

func (passthroughCodec) Marshal(v any) (mem.BufferSlice, error) {
	req := v.(*request)
	if mem.IsBelowBufferPoolingThreshold(cap(req.body)) {
		// gRPC would not give back a buffer this small: hand it a copy.
		return mem.BufferSlice{mem.SliceBuffer(bytes.Clone(req.body))}, nil
	}
	req.hold()
	return mem.BufferSlice{mem.NewBuffer(&req.body, req)}, nil
}

func (passthroughCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (passthroughCodec) Name() string { return "proto" }

// httpTransport sends requests as OTLP/HTTP in binary protobuf.
type httpTransport struct {
	client *http.Client
	urls   [numSignals]string
	header http.Header
	// answered: the receiver has sent an HTTP response, so it speaks
	// HTTP/1.1 and a connection it closes is no sign of the protocol.
	answered atomic.Bool
}

func newHTTP(cfg *otlpconfig.Config, tlsConfig *tls.Config) *httpTransport {
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
	}
	t := &httpTransport{
		client: &http.Client{Transport: &http.Transport{
			Proxy:             http.ProxyFromEnvironment,
			TLSClientConfig:   tlsConfig,
			ForceAttemptHTTP2: true,
			// A connection per sender and one for the metrics, kept
			// between requests rather than closed and dialled anew.
			MaxIdleConnsPerHost: cfg.ConcurrentRequests + 1,
			IdleConnTimeout:     90 * time.Second,
		}},
		header: http.Header{},
	}
	t.urls[signalLogs] = scheme + "://" + cfg.Endpoint + cfg.HTTPPath
	t.urls[signalMetrics] = scheme + "://" + cfg.Endpoint + cfg.MetricsHTTPPath
	for name, value := range cfg.Headers {
		t.header.Set(name, value)
	}
	t.header.Set("Content-Type", "application/x-protobuf")
	t.header.Set("User-Agent", userAgent)
	if cfg.Compression == otlpconfig.CompressionGzip {
		t.header.Set("Content-Encoding", "gzip")
	}
	return t
}

// protocolHint returns a hint for a failed request when the receiver may
// speak gRPC. A gRPC receiver answers HTTP/1.1 with HTTP/2 frames, which
// the transport reports in more than one way, depending on whether it was
// still writing the request (a reset, a broken pipe, a response it did not
// ask for). So: any failure after connecting to a receiver that has never
// given an HTTP response, other than a timeout or a certificate.
func (t *httpTransport) protocolHint(err error) string {
	if hint := protocolHint(err.Error(), otlpconfig.ProtocolGRPC); hint != "" {
		return hint
	}
	if t.answered.Load() {
		return ""
	}
	var opErr *net.OpError
	var netErr net.Error
	var certErr *tls.CertificateVerificationError
	if (errors.As(err, &opErr) && opErr.Op == "dial") || (errors.As(err, &netErr) && netErr.Timeout()) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.As(err, &certErr) {
		return ""
	}
	return otherProtocolHint(otlpconfig.ProtocolGRPC)
}

// maxResponse bounds how much of a response body is read.
const maxResponse = 64 << 10

func (t *httpTransport) export(ctx context.Context, sig signal, req *request) (partial, error) {
	req.hold()
	body := &requestBody{req: req}
	body.Reset(req.body)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, t.urls[sig], body)
	if err != nil {
		body.Close()
		return partial{}, &exportError{err: err}
	}
	hreq.ContentLength = int64(len(req.body))
	hreq.Header = t.header.Clone()
	resp, err := t.client.Do(hreq)
	if err != nil {
		// Connecting, writing or reading failed: the network's trouble.
		if hint := t.protocolHint(err); hint != "" {
			err = fmt.Errorf("%w%s", err, hint)
		}
		return partial{}, &exportError{err: err, retryable: true}
	}
	t.answered.Store(true)
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return partial{}, &exportError{err: fmt.Errorf("reading response: %w", err), retryable: true}
	}
	if resp.StatusCode == http.StatusOK {
		return parseResponse(data)
	}
	e := &exportError{err: fmt.Errorf("HTTP %s: %s", resp.Status, statusMessage(data))}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		e.retryable = true
		e.after = retryAfter(resp.Header.Get("Retry-After"))
	}
	return partial{}, e
}

func (t *httpTransport) close() error {
	t.client.CloseIdleConnections()
	return nil
}

// retryAfter reads a Retry-After header: seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// statusMessage returns the message of a google.rpc.Status body, which
// OTLP/HTTP receivers send with errors, or the start of the body as text.
func statusMessage(body []byte) string {
	for b := body; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 2 && typ == protowire.BytesType { // Status.message
			if v, n := protowire.ConsumeBytes(b); n >= 0 {
				return string(v)
			}
			break
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			break
		}
		b = b[n:]
	}
	const most = 200
	return strings.ToValidUTF8(string(body[:min(len(body), most)]), "?")
}

// parseResponse reads the partial_success of an ExportLogsServiceResponse
// or ExportMetricsServiceResponse: both have it as field 1, and in it the
// count rejected (log records, data points) as field 1 and the message as
// field 2.
func parseResponse(b []byte) (partial, error) {
	var p partial
	ps, err := field(b, 1, protowire.BytesType) // partial_success
	if err != nil || ps == nil {
		return p, err
	}
	for b := ps; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return p, errors.New("malformed partial_success in the response")
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType: // rejected_log_records, rejected_data_points
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return p, errors.New("malformed rejected count in the response")
			}
			p.rejected = int64(v)
			b = b[n:]
		case num == 2 && typ == protowire.BytesType: // error_message
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return p, errors.New("malformed error_message in the response")
			}
			p.message = string(v)
			b = b[n:]
		default:
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return p, errors.New("malformed partial_success in the response")
			}
			b = b[n:]
		}
	}
	return p, nil
}

// field returns the value of the last length-delimited field num of
// message b, nil when there is none.
func field(b []byte, num protowire.Number, typ protowire.Type) ([]byte, error) {
	var v []byte
	for len(b) > 0 {
		n0, t0, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, errors.New("malformed response")
		}
		b = b[n:]
		if n0 == num && t0 == typ {
			val, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, errors.New("malformed response")
			}
			v, b = val, b[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(n0, t0, b); n < 0 {
			return nil, errors.New("malformed response")
		}
		b = b[n:]
	}
	return v, nil
}

// gzipBody compresses req's framed request into req.zipped and makes that
// the body.
func gzipBody(zw *gzip.Writer, req *request) error {
	req.zipped.Reset()
	zw.Reset(&req.zipped)
	if _, err := zw.Write(req.body); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	req.body = req.zipped.Bytes()
	return nil
}
