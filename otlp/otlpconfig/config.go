// Package otlpconfig is the configuration of the OTLP export, the value of
// output.otlp: its keys, defaults and checks. It imports nothing but the
// standard library, so that flowd's config package holds it without the
// exporter's gRPC and protobuf dependencies.
package otlpconfig

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// KeyPrefix is the prefix of the keys of a Config, the value of
// output.otlp.
const KeyPrefix = "output.otlp."

// Config configures the OTLP export: the value of output.otlp. An empty
// Endpoint turns it off.
type Config struct {
	Endpoint           string            `yaml:"endpoint"`            // host:port of the collector's OTLP receiver; "" = no export
	Protocol           Protocol          `yaml:"protocol"`            // grpc or http/protobuf
	HTTPPath           string            `yaml:"http_path"`           // the URL path of http/protobuf requests of records
	Headers            map[string]string `yaml:"headers"`             // sent with every request, e.g. authorization
	TLS                TLS               `yaml:"tls"`                 // off: plain text
	Compression        Compression       `yaml:"compression"`         // none or gzip
	Timeout            time.Duration     `yaml:"timeout"`             // > 0; of one export request
	QueueSize          int               `yaml:"queue_size"`          // records held before new ones are dropped; >= batch_size
	BatchSize          int               `yaml:"batch_size"`          // records per request; 1..MaxBatchSize
	ExportInterval     time.Duration     `yaml:"export_interval"`     // > 0; the longest a record waits for its batch to fill
	ConcurrentRequests int               `yaml:"concurrent_requests"` // 1..MaxConcurrentRequests; requests sent at once
	ShutdownTimeout    time.Duration     `yaml:"shutdown_timeout"`    // > 0; how long Close sends what is queued
	Retry              Retry             `yaml:"retry"`
	MetricsInterval    time.Duration     `yaml:"metrics_interval"`  // 0 or >= MinMetricsInterval; how often the TCP metrics are pushed; 0 = never
	MetricsHTTPPath    string            `yaml:"metrics_http_path"` // the URL path of http/protobuf requests of metrics
}

// TLS configures the connection's TLS. With it off, the ca, cert and key
// files must not be set.
type TLS struct {
	Enabled  bool   `yaml:"enabled"`
	CAFile   string `yaml:"ca_file"`   // PEM certificates the collector's must chain to; "" = the system's roots
	CertFile string `yaml:"cert_file"` // PEM client certificate, for collectors that require one; with key_file
	KeyFile  string `yaml:"key_file"`  // its PEM private key
}

// Retry configures how a failed request is retried: after
// initial_interval, then after intervals doubling up to max_interval
// (each drawn at random within ±50% so that a fleet does not retry in
// step), until max_elapsed_time has passed since the first attempt. Only
// errors the OTLP specification calls transient are retried.
type Retry struct {
	Enabled         bool          `yaml:"enabled"`
	InitialInterval time.Duration `yaml:"initial_interval"` // > 0
	MaxInterval     time.Duration `yaml:"max_interval"`     // >= initial_interval
	MaxElapsedTime  time.Duration `yaml:"max_elapsed_time"` // > 0
}

// Protocol is OTLP's transport.
type Protocol string

// The protocols of OTLP, as OTEL_EXPORTER_OTLP_PROTOCOL names them.
const (
	ProtocolGRPC Protocol = "grpc"
	ProtocolHTTP Protocol = "http/protobuf"
)

func (p *Protocol) UnmarshalText(text []byte) error {
	return oneOf(p, text, ProtocolGRPC, ProtocolHTTP)
}

// Compression is how request bodies are compressed.
type Compression string

// The compressions every OTLP receiver accepts.
const (
	CompressionNone Compression = "none"
	CompressionGzip Compression = "gzip"
)

func (c *Compression) UnmarshalText(text []byte) error {
	return oneOf(c, text, CompressionNone, CompressionGzip)
}

func oneOf[T ~string](v *T, text []byte, allowed ...T) error {
	if !slices.Contains(allowed, T(text)) {
		return fmt.Errorf("%q is not one of %s", text, joinQuoted(allowed))
	}
	*v = T(text)
	return nil
}

func joinQuoted[T ~string](items []T) string {
	s := make([]string, len(items))
	for i, it := range items {
		s[i] = string(it)
	}
	return strings.Join(s, ", ")
}

// MaxBatchSize is the largest batch_size: a batch of the longest records
// (cgroup paths of up to 512 bytes) stays below the 4 MiB an OTLP
// receiver accepts in one request by
// default (the collector's max_recv_msg_size_mib).
const MaxBatchSize = 1024

// MaxConcurrentRequests bounds concurrent_requests: each sender holds a
// request buffer of up to batch_size records.
const MaxConcurrentRequests = 16

// MinMetricsInterval is the shortest metrics_interval but 0: the TCP
// metrics of max_cgroups cgroups are requests of up to a few megabytes.
const MinMetricsInterval = time.Second

// Default is the configuration given no keys: export off, and what
// setting only output.otlp.endpoint gives. The metrics are pushed once a
// minute, the interval OpenTelemetry's SDKs default to
// (OTEL_METRIC_EXPORT_INTERVAL).
func Default() Config {
	return Config{
		Protocol:           ProtocolGRPC,
		HTTPPath:           "/v1/logs",
		Headers:            map[string]string{},
		Compression:        CompressionNone,
		Timeout:            10 * time.Second,
		QueueSize:          65536,
		BatchSize:          1024,
		ExportInterval:     5 * time.Second,
		ConcurrentRequests: 2,
		ShutdownTimeout:    5 * time.Second,
		Retry: Retry{
			Enabled:         true,
			InitialInterval: time.Second,
			MaxInterval:     30 * time.Second,
			MaxElapsedTime:  time.Minute,
		},
		MetricsInterval: time.Minute,
		MetricsHTTPPath: "/v1/metrics",
	}
}

// Enabled reports whether records are exported.
func (c *Config) Enabled() bool { return c.Endpoint != "" }

// MetricsEnabled reports whether the TCP metrics are pushed.
func (c *Config) MetricsEnabled() bool { return c.Enabled() && c.MetricsInterval > 0 }

// Error is a configuration error: the key (output.otlp....), what is wrong
// with its value, quoting it, and the cause if any.
type Error struct {
	Key string
	Msg string
	Err error
}

func (e *Error) Error() string {
	s := e.Key + ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Invalid returns the error about key, without KeyPrefix.
func Invalid(key string, cause error, format string, args ...any) *Error {
	return &Error{Key: KeyPrefix + key, Msg: fmt.Sprintf(format, args...), Err: cause}
}

// Validate checks the values alone and together; the error is an *Error.
// Whether the TLS files can be read is found out when the exporter starts
// (TLS.Load), as flowd checks every file it names.
func (c *Config) Validate() error {
	if c.Endpoint != "" {
		if err := validateEndpoint(c.Endpoint); err != nil {
			return err
		}
	}
	if c.Protocol != ProtocolGRPC && c.Protocol != ProtocolHTTP {
		return Invalid("protocol", nil, "%q is not one of %s", c.Protocol, joinQuoted([]Protocol{ProtocolGRPC, ProtocolHTTP}))
	}
	for _, p := range []struct{ key, path string }{{"http_path", c.HTTPPath}, {"metrics_http_path", c.MetricsHTTPPath}} {
		if !strings.HasPrefix(p.path, "/") || strings.ContainsAny(p.path, "?# \t\r\n") {
			return Invalid(p.key, nil, "%q is not a URL path starting with /", p.path)
		}
	}
	for name, value := range c.Headers {
		if !isToken(name) {
			return Invalid("headers", nil, "%q is not a header name", name)
		}
		if strings.ContainsFunc(value, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) {
			return Invalid("headers", nil, "the value of %q holds a control character", name)
		}
	}
	if err := c.TLS.validate(); err != nil {
		return err
	}
	if c.Compression != CompressionNone && c.Compression != CompressionGzip {
		return Invalid("compression", nil, "%q is not one of %s", c.Compression, joinQuoted([]Compression{CompressionNone, CompressionGzip}))
	}
	if c.Timeout <= 0 {
		return Invalid("timeout", nil, "%s is not greater than 0", c.Timeout)
	}
	if c.BatchSize < 1 || c.BatchSize > MaxBatchSize {
		return Invalid("batch_size", nil, "%d is not in 1..%d", c.BatchSize, MaxBatchSize)
	}
	if c.QueueSize < c.BatchSize {
		return Invalid("queue_size", nil, "%d is smaller than output.otlp.batch_size (%d)", c.QueueSize, c.BatchSize)
	}
	if c.ExportInterval <= 0 {
		return Invalid("export_interval", nil, "%s is not greater than 0", c.ExportInterval)
	}
	if c.ConcurrentRequests < 1 || c.ConcurrentRequests > MaxConcurrentRequests {
		return Invalid("concurrent_requests", nil, "%d is not in 1..%d", c.ConcurrentRequests, MaxConcurrentRequests)
	}
	if c.ShutdownTimeout <= 0 {
		return Invalid("shutdown_timeout", nil, "%s is not greater than 0", c.ShutdownTimeout)
	}
	r := c.Retry
	if r.InitialInterval <= 0 {
		return Invalid("retry.initial_interval", nil, "%s is not greater than 0", r.InitialInterval)
	}
	if r.MaxInterval < r.InitialInterval {
		return Invalid("retry.max_interval", nil, "%s is smaller than output.otlp.retry.initial_interval (%s)", r.MaxInterval, r.InitialInterval)
	}
	if r.MaxElapsedTime <= 0 {
		return Invalid("retry.max_elapsed_time", nil, "%s is not greater than 0", r.MaxElapsedTime)
	}
	if d := c.MetricsInterval; d != 0 && d < MinMetricsInterval {
		return Invalid("metrics_interval", nil, "%s is neither 0 (no metrics) nor at least %s", d, MinMetricsInterval)
	}
	return nil
}

// validateEndpoint checks that s is host:port.
func validateEndpoint(s string) error {
	if strings.Contains(s, "://") {
		return Invalid("endpoint", nil, "%q is not host:port: the scheme follows from output.otlp.tls.enabled, the path from output.otlp.http_path", s)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Invalid("endpoint", nil, "%q is not host:port (e.g. collector.example:4317, 127.0.0.1:4318)", s)
	}
	if host == "" || strings.ContainsAny(host, "/?#@ ") {
		return Invalid("endpoint", nil, "%q has no valid host", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return Invalid("endpoint", nil, "%q has no valid port number (1..65535)", s)
	}
	return nil
}

// isToken reports whether s is an HTTP field name (RFC 9110 token).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// validate checks the values of t: files only with TLS on, a client
// certificate with its key.
func (t *TLS) validate() error {
	if !t.Enabled {
		for _, f := range []struct{ key, value string }{{"tls.ca_file", t.CAFile}, {"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile}} {
			if f.value != "" {
				return Invalid(f.key, nil, "%q is set but output.otlp.tls.enabled is false", f.value)
			}
		}
		return nil
	}
	switch {
	case t.CertFile == "" && t.KeyFile != "":
		return Invalid("tls.cert_file", nil, `"" but output.otlp.tls.key_file is set: give both or neither`)
	case t.KeyFile == "" && t.CertFile != "":
		return Invalid("tls.key_file", nil, `"" but output.otlp.tls.cert_file is set: give both or neither`)
	}
	return nil
}

// Load returns the tls.Config of t, nil when TLS is off, reading its
// files. Its error is an *Error naming the file's key.
func (t *TLS) Load() (*tls.Config, error) {
	if err := t.validate(); err != nil || !t.Enabled {
		return nil, err
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, Invalid("tls.ca_file", err, "reading %q", t.CAFile)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, Invalid("tls.ca_file", nil, "%q holds no PEM certificate", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, Invalid("tls.cert_file", err, "loading %q with key %q", t.CertFile, t.KeyFile)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// ParseHeaders reads headers in the form OTEL_EXPORTER_OTLP_HEADERS uses,
// "name1=value1,name2=value2" with %-escapes in values decoded, for setting
// output.otlp.headers from one environment variable.
func ParseHeaders(s string) (map[string]string, error) {
	h := map[string]string{}
	for _, item := range strings.Split(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		name, value, ok := strings.Cut(item, "=")
		name = strings.TrimSpace(name)
		if !ok || !isToken(name) {
			return nil, fmt.Errorf("%q is not name=value", item)
		}
		v, err := url.PathUnescape(strings.TrimSpace(value))
		if err != nil {
			return nil, fmt.Errorf("the value of %q: %w", name, err)
		}
		h[name] = v
	}
	return h, nil
}
