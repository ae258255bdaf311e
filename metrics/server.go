package metrics

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"html/template"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/sirupsen/logrus"
)

// Paths the server serves, besides an index at /.
const (
	Path       = "/metrics"
	HealthPath = "/healthz"
)

// ServerOptions bound what clients of the endpoint can hold: time and
// connections. A zero field takes its default.
type ServerOptions struct {
	ReadHeaderTimeout time.Duration // to read a request's headers; a new connection's first request too
	ReadTimeout       time.Duration // to read a whole request
	WriteTimeout      time.Duration // from the end of the headers to the end of the response
	IdleTimeout       time.Duration // a kept-alive connection's wait for its next request
	MaxConns          int           // connections open at once; more are closed at once
}

// DefaultServerOptions: Prometheus scrapes in well under the write
// timeout, and every minute or more often, which the idle timeout lets it
// do on one connection. 32 connections are for a few scrapers and
// people; they hold about 20 KB each at most.
var DefaultServerOptions = ServerOptions{
	ReadHeaderTimeout: 5 * time.Second,
	ReadTimeout:       10 * time.Second,
	WriteTimeout:      30 * time.Second,
	IdleTimeout:       2 * time.Minute,
	MaxConns:          32,
}

// maxHeaderBytes bounds a request's headers: a scrape's are a few hundred bytes.
const maxHeaderBytes = 16 << 10

func (o ServerOptions) withDefaults() ServerOptions {
	d := DefaultServerOptions
	for _, f := range []struct{ v, def *time.Duration }{
		{&o.ReadHeaderTimeout, &d.ReadHeaderTimeout}, {&o.ReadTimeout, &d.ReadTimeout},
		{&o.WriteTimeout, &d.WriteTimeout}, {&o.IdleTimeout, &d.IdleTimeout},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	if o.MaxConns <= 0 {
		o.MaxConns = d.MaxConns
	}
	return o
}

// Server serves the metrics over HTTP.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan struct{} // closed when Serve has returned
}

// Listen binds addr (host:port; port 0 picks a free one) and serves, until
// Shutdown, the metrics at Path, the health at HealthPath and an index at
// /. Errors after a successful bind are logged.
func (m *Metrics) Listen(addr string, opts ServerOptions, log logrus.FieldLogger) (*Server, error) {
	opts = opts.withDefaults()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	errLog := stdlog.New(logWriter{log}, "", 0)
	s := &Server{
		srv: &http.Server{
			Handler:           m.handler(errLog),
			ReadHeaderTimeout: opts.ReadHeaderTimeout,
			ReadTimeout:       opts.ReadTimeout,
			WriteTimeout:      opts.WriteTimeout,
			IdleTimeout:       opts.IdleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ErrorLog:          errLog,
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	limited := &limitListener{Listener: ln, slots: make(chan struct{}, opts.MaxConns), rejected: m.rejectedConns.Inc}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(limited); !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("metrics server failed")
		}
	}()
	return s, nil
}

// handler serves the metrics, the health and the index.
func (m *Metrics) handler(errLog *stdlog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(Path, m.metricsHandler(errLog))
	mux.HandleFunc(HealthPath, m.serveHealth)
	mux.HandleFunc("/{$}", serveIndex)
	return mux
}

// metricsHandler writes the registry's metrics, then the TCP metrics,
// which the registry does not hold (tcpExporter), in the text format; and
// gzipped, at its fastest level, when the client takes it. What could not
// be gathered is logged and left out.
func (m *Metrics) metricsHandler(errLog *stdlog.Logger) http.HandlerFunc {
	gzips := sync.Pool{New: func() any {
		w, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
		return w
	}}
	format := expfmt.NewFormat(expfmt.TypeTextPlain)
	return func(w http.ResponseWriter, r *http.Request) {
		families, err := m.reg.Gather()
		if err != nil && errLog != nil {
			errLog.Printf("gathering metrics: %v", err)
		}
		w.Header().Set("Content-Type", string(format))
		out := io.Writer(w)
		if acceptsGzip(r.Header.Get("Accept-Encoding")) {
			w.Header().Set("Content-Encoding", "gzip")
			gz := gzips.Get().(*gzip.Writer)
			gz.Reset(w)
			defer func() {
				_ = gz.Close()
				gzips.Put(gz)
			}()
			out = gz
		}
		enc := expfmt.NewEncoder(out, format)
		for _, f := range families {
			if err := enc.Encode(f); err != nil {
				return // the client went away
			}
		}
		m.tcpMu.Lock()
		tcp := m.tcp
		m.tcpMu.Unlock()
		if tcp != nil {
			_ = tcp.writeText(out)
		}
	}
}

// acceptsGzip reports whether an Accept-Encoding header lists gzip.
func acceptsGzip(header string) bool {
	for _, enc := range strings.Split(header, ",") {
		enc, params, _ := strings.Cut(enc, ";")
		if strings.TrimSpace(enc) == "gzip" {
			return strings.ReplaceAll(strings.TrimSpace(params), " ", "") != "q=0"
		}
	}
	return false
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Shutdown stops the server, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	if err != nil {
		return fmt.Errorf("stopping metrics server: %w", err)
	}
	return nil
}

// serveHealth answers 200 when every backend records flows, 503 otherwise,
// with the reason on one line.
func (m *Metrics) serveHealth(w http.ResponseWriter, _ *http.Request) {
	ok, reason := m.health.Status()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, reason)
}

var index = template.Must(template.New("index").Parse(`<!DOCTYPE html>
<html><head><title>flowd</title></head>
<body><h1>flowd</h1><ul>
<li><a href="{{.Metrics}}">{{.Metrics}}</a>: Prometheus metrics</li>
<li><a href="{{.Health}}">{{.Health}}</a>: 200 when every backend records flows, 503 and why otherwise</li>
</ul></body></html>
`))

func serveIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = index.Execute(w, struct{ Metrics, Health string }{Path, HealthPath})
}

// limitListener keeps at most cap(slots) connections open: it closes the
// others as soon as they are accepted, with a reset, so that neither
// flowd's memory and descriptors nor the kernel's backlog grow with idle
// clients, and a client over the limit learns it at once.
type limitListener struct {
	net.Listener
	slots    chan struct{}
	rejected func()
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &limitedConn{Conn: c, release: sync.OnceFunc(func() { <-l.slots })}, nil
		default:
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // a reset: no TIME_WAIT left behind
			}
			_ = c.Close()
			l.rejected()
		}
	}
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

// logWriter turns the standard logger's lines (from net/http and promhttp)
// into logrus warnings.
type logWriter struct{ log logrus.FieldLogger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
