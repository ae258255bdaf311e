package otlpconfig

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")

	for _, tc := range []struct {
		name   string
		change func(c *Config)
		key    string // "" = valid
		value  string // quoted in the message
	}{
		{"default", func(c *Config) {}, "", ""},
		{"grpc endpoint", func(c *Config) { c.Endpoint = "collector.example:4317" }, "", ""},
		{"IPv6 endpoint", func(c *Config) { c.Endpoint = "[::1]:4318"; c.Protocol = ProtocolHTTP }, "", ""},
		{"URL endpoint", func(c *Config) { c.Endpoint = "http://collector:4318" }, "output.otlp.endpoint", `"http://collector:4318"`},
		{"no port", func(c *Config) { c.Endpoint = "collector" }, "output.otlp.endpoint", `"collector"`},
		{"port 0", func(c *Config) { c.Endpoint = "collector:0" }, "output.otlp.endpoint", `"collector:0"`},
		{"port too large", func(c *Config) { c.Endpoint = "collector:70000" }, "output.otlp.endpoint", `"collector:70000"`},
		{"no host", func(c *Config) { c.Endpoint = ":4317" }, "output.otlp.endpoint", `":4317"`},
		{"path in endpoint", func(c *Config) { c.Endpoint = "collector:4318/v1/logs" }, "output.otlp.endpoint", `"collector:4318/v1/logs"`},
		{"protocol", func(c *Config) { c.Protocol = "http/json" }, "output.otlp.protocol", `"http/json"`},
		{"http_path", func(c *Config) { c.HTTPPath = "v1/logs" }, "output.otlp.http_path", `"v1/logs"`},
		{"header name", func(c *Config) { c.Headers = map[string]string{"bad name": "x"} }, "output.otlp.headers", `"bad name"`},
		{"header value", func(c *Config) { c.Headers = map[string]string{"authorization": "a\r\nb"} }, "output.otlp.headers", `"authorization"`},
		{"compression", func(c *Config) { c.Compression = "zstd" }, "output.otlp.compression", `"zstd"`},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "output.otlp.timeout", "0s"},
		{"batch_size 0", func(c *Config) { c.BatchSize = 0 }, "output.otlp.batch_size", "0"},
		{"batch_size too large", func(c *Config) { c.BatchSize = MaxBatchSize + 1 }, "output.otlp.batch_size", "1025"},
		{"queue_size below batch_size", func(c *Config) { c.QueueSize = 100 }, "output.otlp.queue_size", "100"},
		{"export_interval", func(c *Config) { c.ExportInterval = -time.Second }, "output.otlp.export_interval", "-1s"},
		{"concurrent_requests", func(c *Config) { c.ConcurrentRequests = 0 }, "output.otlp.concurrent_requests", "0"},
		{"shutdown_timeout", func(c *Config) { c.ShutdownTimeout = 0 }, "output.otlp.shutdown_timeout", "0s"},
		{"retry.initial_interval", func(c *Config) { c.Retry.InitialInterval = 0 }, "output.otlp.retry.initial_interval", "0s"},
		{"retry.max_interval", func(c *Config) { c.Retry.MaxInterval = 500 * time.Millisecond }, "output.otlp.retry.max_interval", "500ms"},
		{"retry.max_elapsed_time", func(c *Config) { c.Retry.MaxElapsedTime = 0 }, "output.otlp.retry.max_elapsed_time", "0s"},
		{"metrics_http_path", func(c *Config) { c.MetricsHTTPPath = "/v1/metrics?x" }, "output.otlp.metrics_http_path", `"/v1/metrics?x"`},
		{"no metrics", func(c *Config) { c.MetricsInterval = 0 }, "", ""},
		{"metrics_interval too short", func(c *Config) { c.MetricsInterval = 100 * time.Millisecond }, "output.otlp.metrics_interval", "100ms"},
		{"metrics_interval negative", func(c *Config) { c.MetricsInterval = -time.Second }, "output.otlp.metrics_interval", "-1s"},
		{"CA file without TLS", func(c *Config) { c.TLS.CAFile = notPEM }, "output.otlp.tls.ca_file", notPEM},
		{"cert without key", func(c *Config) { c.TLS = TLS{Enabled: true, CertFile: notPEM} }, "output.otlp.tls.key_file", `""`},
		{"key without cert", func(c *Config) { c.TLS = TLS{Enabled: true, KeyFile: notPEM} }, "output.otlp.tls.cert_file", `""`},
		{"TLS with system roots", func(c *Config) { c.TLS = TLS{Enabled: true} }, "", ""},
		// Values only: the files are read by Load.
		{"missing CA file", func(c *Config) { c.TLS = TLS{Enabled: true, CAFile: missing} }, "", ""},
		{"CA file not PEM", func(c *Config) { c.TLS = TLS{Enabled: true, CAFile: notPEM} }, "", ""},
		{"missing key pair", func(c *Config) { c.TLS = TLS{Enabled: true, CertFile: missing, KeyFile: missing} }, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default()
			tc.change(&c)
			checkError(t, c.Validate(), tc.key, tc.value)
		})
	}
}

// TestLoadTLS checks that Load reads the files and names the key of the
// one at fault.
func TestLoadTLS(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name  string
		tls   TLS
		key   string // "" = valid
		value string
	}{
		{"off", TLS{}, "", ""},
		{"system roots", TLS{Enabled: true}, "", ""},
		{"missing CA file", TLS{Enabled: true, CAFile: missing}, "output.otlp.tls.ca_file", missing},
		{"CA file not PEM", TLS{Enabled: true, CAFile: notPEM}, "output.otlp.tls.ca_file", notPEM},
		{"bad key pair", TLS{Enabled: true, CertFile: notPEM, KeyFile: notPEM}, "output.otlp.tls.cert_file", notPEM},
		{"missing key pair", TLS{Enabled: true, CertFile: missing, KeyFile: missing}, "output.otlp.tls.cert_file", missing},
		{"cert without key", TLS{Enabled: true, CertFile: notPEM}, "output.otlp.tls.key_file", `""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.tls.Load()
			checkError(t, err, tc.key, tc.value)
			if err == nil && (c != nil) != tc.tls.Enabled {
				t.Errorf("tls.Config %v with TLS enabled %v", c, tc.tls.Enabled)
			}
		})
	}
}

// checkError checks that err is nil when key is "", else an *Error of key
// that quotes value.
func checkError(t *testing.T, err error, key, value string) {
	t.Helper()
	if key == "" {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want an *Error for %s", err, key)
	}
	if e.Key != key || !strings.Contains(err.Error(), value) || !strings.HasPrefix(err.Error(), key+": ") {
		t.Errorf("got %q (key %s), want an error of %s quoting %s", err, e.Key, key, value)
	}
	t.Log(err)
}

// TestYAML checks the keys and the decoding of the enums and durations:
// the configuration file's output.otlp section decodes into a Config.
func TestYAML(t *testing.T) {
	in := `
endpoint: collector.example:4318
protocol: http/protobuf
http_path: /otlp/v1/logs
headers: {authorization: "Bearer x"}
tls: {enabled: true, ca_file: /etc/flowd/ca.pem, cert_file: /etc/flowd/c.pem, key_file: /etc/flowd/k.pem}
compression: gzip
timeout: 5s
queue_size: 1000
batch_size: 100
export_interval: 200ms
concurrent_requests: 4
shutdown_timeout: 2s
retry: {enabled: false, initial_interval: 2s, max_interval: 4s, max_elapsed_time: 8s}
metrics_interval: 10s
metrics_http_path: /otlp/v1/metrics
`
	c := Default()
	dec := yaml.NewDecoder(strings.NewReader(in))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	want := Config{
		Endpoint: "collector.example:4318", Protocol: ProtocolHTTP, HTTPPath: "/otlp/v1/logs",
		Headers:     map[string]string{"authorization": "Bearer x"},
		TLS:         TLS{Enabled: true, CAFile: "/etc/flowd/ca.pem", CertFile: "/etc/flowd/c.pem", KeyFile: "/etc/flowd/k.pem"},
		Compression: CompressionGzip, Timeout: 5 * time.Second, QueueSize: 1000, BatchSize: 100,
		ExportInterval: 200 * time.Millisecond, ConcurrentRequests: 4, ShutdownTimeout: 2 * time.Second,
		Retry:           Retry{InitialInterval: 2 * time.Second, MaxInterval: 4 * time.Second, MaxElapsedTime: 8 * time.Second},
		MetricsInterval: 10 * time.Second, MetricsHTTPPath: "/otlp/v1/metrics",
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", c, want)
	}
	for _, bad := range []string{"protocol: grpc-web", "compression: br"} {
		c := Default()
		if err := yaml.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("%s: decoded without error", bad)
		}
	}
}

func TestParseHeaders(t *testing.T) {
	got, err := ParseHeaders("authorization=Bearer%20abc, x-scope-orgid = tenant-1,,")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"authorization": "Bearer abc", "x-scope-orgid": "tenant-1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"novalue", "bad name=x", "a=%zz"} {
		if _, err := ParseHeaders(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
