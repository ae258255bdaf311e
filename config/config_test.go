package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

func TestMain(m *testing.M) {
	// The tests set FLOWD_* themselves; ones from the caller's shell would
	// change what they see.
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, EnvPrefix+"_") {
			os.Unsetenv(name)
		}
	}
	os.Exit(m.Run())
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flowd.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func defaults() *Config {
	return &Config{
		Backends:      []Backend{"auto"},
		Cgroup:        "",
		CgroupRemoved: "wait",
		EBPF: EBPF{
			Mode:          "poll",
			Interval:      time.Second,
			IdleInterval:  time.Minute,
			MaxFlows:      65536,
			RingbufSize:   8 << 20,
			FlushInterval: 100 * time.Millisecond,
		},
		Netlink: Netlink{Interval: time.Second},
		Filter:  Filter{LocalPorts: []Port{}, RemotePorts: []Port{}, RemoteCIDRs: []netip.Prefix{}},
		Output: Output{Path: "-", Mode: 0o600, TCPInfo: []flow.Field{}, Samples: "full",
			Events: []flow.Event{flow.EventOpen, flow.EventSample, flow.EventState, flow.EventClose}, OTLP: otlpconfig.Config{
				Protocol: "grpc", HTTPPath: "/v1/logs", Headers: map[string]string{}, Compression: "none",
				Timeout: 10 * time.Second, QueueSize: 65536, BatchSize: 1024, ExportInterval: 5 * time.Second,
				ConcurrentRequests: 2, ShutdownTimeout: 5 * time.Second,
				Retry:           otlpconfig.Retry{Enabled: true, InitialInterval: time.Second, MaxInterval: 30 * time.Second, MaxElapsedTime: time.Minute},
				MetricsInterval: time.Minute, MetricsHTTPPath: "/v1/metrics",
			}},
		Log:     Log{Level: "info", Format: "text"},
		Metrics: Metrics{MaxCgroups: 1000, ByIPv4Prefix: 24, ByIPv6Prefix: 64, MaxBy: 100, MaxFlows: 100},
	}
}

func TestDefaults(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	want := defaults()
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load(\"\") = %+v, want %+v", c, want)
	}
	if !reflect.DeepEqual(Default(), want) {
		t.Errorf("Default() = %+v, want %+v", Default(), want)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
}

// TestDefaultFile keeps configs/flowd.yaml and the code in step: the file
// sets every key, and to its default.
func TestDefaultFile(t *testing.T) {
	const path = "../configs/flowd.yaml"
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load(%s) = %+v, want the defaults %+v", path, got, want)
	}
	m, err := readFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		var v any = m
		for name := range strings.SplitSeq(k, ".") {
			section, _ := v.(map[string]any)
			v = section[name]
		}
		if v == nil {
			t.Errorf("%s does not set %s", path, k)
		}
	}
}

func TestLoadFile(t *testing.T) {
	out := filepath.Join(t.TempDir(), "records.jsonl")
	path := writeConfig(t, `
backends: [ebpf, netlink]
cgroup: /sys/fs/cgroup/flowd.test
cgroup_removed: exit
ebpf:
  mode: transition
  interval: 0s
  ringbuf_size: 65536
  flush_interval: 250ms
netlink:
  interval: 2s
filter:
  local_ports: [5201, "80"]
  remote_ports: [443]
  remote_cidrs: [10.1.2.3/8, "2001:db8::1/32"]
output:
  path: `+out+`
  mode: "0640"
  follow_symlinks: true
  tcp_info: [snd_cwnd, rtt, "snd_cwnd"]
  samples: changes
  events: [close, open, close]
  otlp:
    endpoint: collector.example:4318
    protocol: http/protobuf
    http_path: /otlp/v1/logs
    headers: {Authorization: "Bearer abc", X-Scope-OrgID: tenant-1}
    tls: {enabled: true, ca_file: /etc/flowd/ca.pem, cert_file: /etc/flowd/flowd.pem, key_file: /etc/flowd/flowd.key}
    compression: gzip
    timeout: 3s
    queue_size: 4096
    batch_size: 256
    export_interval: 500ms
    concurrent_requests: 4
    shutdown_timeout: 2s
    retry: {enabled: false, initial_interval: 2s, max_interval: 4s, max_elapsed_time: 10s}
    metrics_interval: 15s
    metrics_http_path: /otlp/v1/metrics
log:
  level: debug
  format: json
metrics:
  listen: "127.0.0.1:9977"
  max_cgroups: 50
  by: remote_prefix
  by_ipv4_prefix: 16
  by_ipv6_prefix: 48
  max_by: 20
  per_flow: true
  max_flows: 10
  bpf_stats: true
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Backends:      []Backend{"ebpf", "netlink"},
		Cgroup:        "/sys/fs/cgroup/flowd.test",
		CgroupRemoved: "exit",
		EBPF:          EBPF{Mode: "transition", Interval: 0, IdleInterval: time.Minute, MaxFlows: 65536, RingbufSize: 65536, FlushInterval: 250 * time.Millisecond},
		Netlink:       Netlink{Interval: 2 * time.Second},
		Filter: Filter{
			LocalPorts:  []Port{5201, 80},
			RemotePorts: []Port{443},
			RemoteCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")},
		},
		Output: Output{Path: out, Mode: 0o640, FollowSymlinks: true, TCPInfo: []flow.Field{flow.FieldSndCwnd, flow.FieldRTT},
			Samples: "changes", Events: []flow.Event{flow.EventClose, flow.EventOpen},
			OTLP: otlpconfig.Config{Endpoint: "collector.example:4318", Protocol: "http/protobuf", HTTPPath: "/otlp/v1/logs",
				Headers:     map[string]string{"authorization": "Bearer abc", "x-scope-orgid": "tenant-1"},
				TLS:         otlpconfig.TLS{Enabled: true, CAFile: "/etc/flowd/ca.pem", CertFile: "/etc/flowd/flowd.pem", KeyFile: "/etc/flowd/flowd.key"},
				Compression: "gzip", Timeout: 3 * time.Second, QueueSize: 4096, BatchSize: 256, ExportInterval: 500 * time.Millisecond,
				ConcurrentRequests: 4, ShutdownTimeout: 2 * time.Second,
				Retry:           otlpconfig.Retry{InitialInterval: 2 * time.Second, MaxInterval: 4 * time.Second, MaxElapsedTime: 10 * time.Second},
				MetricsInterval: 15 * time.Second, MetricsHTTPPath: "/otlp/v1/metrics"}},
		Log: Log{Level: "debug", Format: "json"},
		Metrics: Metrics{Listen: "127.0.0.1:9977", MaxCgroups: 50, By: "remote_prefix", ByIPv4Prefix: 16, ByIPv6Prefix: 48,
			MaxBy: 20, PerFlow: true, MaxFlows: 10, BPFStats: true},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got %+v, want %+v", c, want)
	}
	// Loading looks at nothing on the machine, let alone creates the output.
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("loading left %s behind (stat: %v)", out, err)
	}
}

func TestEnv(t *testing.T) {
	path := writeConfig(t, "ebpf:\n  mode: poll\nnetlink:\n  interval: 5s\n")
	t.Setenv("FLOWD_EBPF_MODE", "transition")
	t.Setenv("FLOWD_NETLINK_INTERVAL", "2s")
	t.Setenv("FLOWD_EBPF_RINGBUF_SIZE", "8192")
	t.Setenv("FLOWD_FILTER_LOCAL_PORTS", "80, 443 8080")
	t.Setenv("FLOWD_FILTER_REMOTE_CIDRS", "192.168.0.0/16,::1/128")
	t.Setenv("FLOWD_LOG_LEVEL", "warn")
	t.Setenv("FLOWD_OUTPUT_TCP_INFO", "delivery_rate, snd_cwnd")
	t.Setenv("FLOWD_OUTPUT_MODE", "0o644")
	t.Setenv("FLOWD_OUTPUT_FOLLOW_SYMLINKS", "true")
	t.Setenv("FLOWD_OUTPUT_OTLP_ENDPOINT", "collector:4317")
	t.Setenv("FLOWD_OUTPUT_OTLP_HEADERS", "Authorization=Bearer%20abc, X-Scope-OrgID=tenant-1")
	t.Setenv("FLOWD_OUTPUT_OTLP_TLS_ENABLED", "true")
	for _, backendsVar := range []string{"ebpf netlink", "ebpf,netlink"} {
		t.Setenv("FLOWD_BACKENDS", backendsVar)
		c, err := Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if c.EBPF.Mode != "transition" || c.Netlink.Interval != 2*time.Second || c.EBPF.RingbufSize != 8192 ||
			!reflect.DeepEqual(c.Backends, []Backend{"ebpf", "netlink"}) ||
			!reflect.DeepEqual(c.Filter.LocalPorts, []Port{80, 443, 8080}) ||
			len(c.Filter.RemoteCIDRs) != 2 || c.Log.Level != "warn" || c.Output.Mode != 0o644 || !c.Output.FollowSymlinks ||
			!reflect.DeepEqual(c.Output.TCPInfo, []flow.Field{flow.FieldDeliveryRate, flow.FieldSndCwnd}) ||
			c.Output.OTLP.Endpoint != "collector:4317" || !c.Output.OTLP.TLS.Enabled ||
			!reflect.DeepEqual(c.Output.OTLP.Headers, map[string]string{"authorization": "Bearer abc", "x-scope-orgid": "tenant-1"}) {
			t.Errorf("FLOWD_BACKENDS=%q: env did not override: %+v", backendsVar, c)
		}
	}
}

func TestFlagOverridesEnvAndFile(t *testing.T) {
	path := writeConfig(t, "log:\n  level: error\n")
	t.Setenv("FLOWD_LOG_LEVEL", "warn")

	fs := pflag.NewFlagSet("flowd", pflag.ContinueOnError)
	fs.String("log-level", "", "")
	flag := fs.Lookup("log-level")

	c, err := Load(path, WithFlag("log.level", flag))
	if err != nil {
		t.Fatal(err)
	}
	if c.Log.Level != "warn" {
		t.Errorf("unset flag: log.level = %q, want the environment's warn", c.Log.Level)
	}
	if err := fs.Parse([]string{"--log-level=trace"}); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(path, WithFlag("log.level", flag)); err != nil {
		t.Fatal(err)
	}
	if c.Log.Level != "trace" {
		t.Errorf("log.level = %q, want the flag's trace", c.Log.Level)
	}
	if err := fs.Parse([]string{"--log-level=loud"}); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path, WithFlag("log.level", flag))
	if err == nil || !strings.Contains(err.Error(), `log.level: "loud"`) || !strings.Contains(err.Error(), "--log-level") {
		t.Errorf("bad flag value: err = %v", err)
	}
}

func TestErrors(t *testing.T) {
	tests := []struct {
		name string
		file string            // config file content ("" = no file)
		env  map[string]string // environment
		want []string          // substrings of the error
	}{
		{name: "unknown top-level key", file: "bogus: 1\n", want: []string{"bogus: unknown key"}},
		{name: "unknown nested key", file: "ebpf:\n  mode: poll\n  moed: poll\n", want: []string{"ebpf.moed: unknown key (did you mean ebpf.mode?)"}},
		{name: "unknown key in a section that has none", file: "filter:\n  ports: [1]\n", want: []string{"filter.ports: unknown key (did you mean filter.local_ports or filter.remote_ports?)"}},
		{name: "key in wrong case", file: "Backends: [ebpf]\n", want: []string{"Backends: unknown key (did you mean backends?)"}},
		{name: "dotted key", file: "ebpf.mode: poll\n", want: []string{"ebpf.mode: unknown key"}},
		{name: "section not a mapping", file: "ebpf: fast\n", want: []string{"ebpf:", `"fast" is not a mapping`}},
		{name: "not YAML", file: "backends: [ebpf\n", want: []string{"parsing config file"}},
		{name: "top level not a mapping", file: "- a\n- b\n", want: []string{"does not hold a mapping"}},
		{name: "unknown env var", env: map[string]string{"FLOWD_EBPF_MOOD": "poll"}, want: []string{"FLOWD_EBPF_MOOD", "sets no config key (did you mean FLOWD_EBPF_MODE?)"}},

		{name: "unknown backend", file: "backends: [ebpf, bpf]\n", want: []string{"backends:", `"bpf" is not one of auto, ebpf, netlink`}},
		{name: "unknown backend env", env: map[string]string{"FLOWD_BACKENDS": "ebpf,nl"}, want: []string{"backends:", `"nl"`, "FLOWD_BACKENDS"}},
		{name: "auto combined", file: "backends: [auto, netlink]\n", want: []string{"backends:", `"auto" cannot be combined`}},
		{name: "duplicate backend", file: "backends: [netlink, netlink]\n", want: []string{"backends:", `"netlink" is listed twice`}},
		{name: "no backend", file: "backends: []\n", want: []string{"backends:", "empty"}},
		{name: "backends a mapping", file: "backends: {a: 1}\n", want: []string{"backends:", "{a: 1} is not a list"}},

		{name: "unknown mode", file: "ebpf:\n  mode: fast\n", want: []string{`ebpf.mode: "fast" is not one of poll, transition`}},
		{name: "unknown mode env", env: map[string]string{"FLOWD_EBPF_MODE": "fast"}, want: []string{`ebpf.mode: "fast" is not one of poll, transition`, "FLOWD_EBPF_MODE"}},
		{name: "mode a list", file: "ebpf:\n  mode: [poll]\n", want: []string{"ebpf.mode:", `["poll"] is not a string`}},
		{name: "bad duration", file: "ebpf:\n  interval: 1x\n", want: []string{`ebpf.interval: "1x" is not a duration`}},
		{name: "bad duration env", env: map[string]string{"FLOWD_NETLINK_INTERVAL": "2 seconds"}, want: []string{`netlink.interval: "2 seconds" is not a duration`}},
		{name: "duration without unit", file: "netlink:\n  interval: 5\n", want: []string{"netlink.interval: 5 is not a duration"}},
		{name: "negative interval", file: "ebpf:\n  interval: -1s\n", want: []string{"ebpf.interval: -1s is not 0 or more"}},
		{name: "negative idle interval", file: "ebpf:\n  idle_interval: -1s\n", want: []string{"ebpf.idle_interval: -1s is not 0 or more"}},
		{name: "idle interval without unit", file: "ebpf:\n  idle_interval: 60\n", want: []string{"ebpf.idle_interval: 60 is not a duration"}},
		{name: "zero max flows", file: "ebpf:\n  max_flows: 0\n", want: []string{"ebpf.max_flows: 0 is out of range 1..16777216"}},
		{name: "too many max flows", env: map[string]string{"FLOWD_EBPF_MAX_FLOWS": "16777217"}, want: []string{"ebpf.max_flows: 16777217 is out of range", "(set by FLOWD_EBPF_MAX_FLOWS)"}},
		{name: "zero flush interval", file: "ebpf:\n  flush_interval: 0s\n", want: []string{"ebpf.flush_interval: 0s is shorter than 1ms"}},
		{name: "negative flush interval", file: "ebpf:\n  flush_interval: -5ms\n", want: []string{"ebpf.flush_interval: -5ms"}},
		{name: "tiny flush interval", file: "ebpf:\n  flush_interval: 1ns\n", want: []string{"ebpf.flush_interval: 1ns is shorter than 1ms"}},
		{name: "tiny flush interval env", env: map[string]string{"FLOWD_EBPF_FLUSH_INTERVAL": "999us"}, want: []string{"ebpf.flush_interval: 999µs is shorter than 1ms", "FLOWD_EBPF_FLUSH_INTERVAL"}},
		{name: "zero netlink interval", file: "netlink:\n  interval: 0\n", want: []string{"netlink.interval: 0s is shorter than 10ms"}},
		{name: "tiny netlink interval", file: "netlink:\n  interval: 1ms\n", want: []string{"netlink.interval: 1ms is shorter than 10ms"}},
		{name: "ringbuf not power of two", file: "ebpf:\n  ringbuf_size: 12288\n", want: []string{"ebpf.ringbuf_size: 12288 is not a power of two"}},
		{name: "ringbuf below page size", file: "ebpf:\n  ringbuf_size: 2048\n", want: []string{"ebpf.ringbuf_size: 2048 is smaller than the page size"}},
		{name: "ringbuf zero", file: "ebpf:\n  ringbuf_size: 0\n", want: []string{"ebpf.ringbuf_size: 0"}},
		{name: "ringbuf negative", file: "ebpf:\n  ringbuf_size: -4096\n", want: []string{"ebpf.ringbuf_size: -4096"}},
		{name: "ringbuf too large", file: "ebpf:\n  ringbuf_size: 4294967296\n", want: []string{"ebpf.ringbuf_size: 4294967296 is larger"}},
		{name: "ringbuf with unit", file: "ebpf:\n  ringbuf_size: 4MiB\n", want: []string{`ebpf.ringbuf_size: "4MiB" is not an integer`}},
		{name: "ringbuf env", env: map[string]string{"FLOWD_EBPF_RINGBUF_SIZE": "lots"}, want: []string{`ebpf.ringbuf_size: "lots" is not an integer`}},
		{name: "ringbuf float", file: "ebpf:\n  ringbuf_size: 4096.5\n", want: []string{"ebpf.ringbuf_size: 4096.5 is not an integer"}},

		{name: "local port zero", file: "filter:\n  local_ports: [0]\n", want: []string{"filter.local_ports: 0 is out of range 1..65535"}},
		{name: "local port too large", file: "filter:\n  local_ports: [80, 65536]\n", want: []string{"filter.local_ports: 65536 is out of range 1..65535"}},
		{name: "remote port negative", file: "filter:\n  remote_ports: [-1]\n", want: []string{"filter.remote_ports: -1 is out of range"}},
		{name: "remote port env", env: map[string]string{"FLOWD_FILTER_REMOTE_PORTS": "443,70000"}, want: []string{"filter.remote_ports: 70000 is out of range", "FLOWD_FILTER_REMOTE_PORTS"}},
		{name: "port not a number", file: "filter:\n  local_ports: [http]\n", want: []string{`filter.local_ports: "http" is not a port number`}},
		{name: "bad CIDR", file: "filter:\n  remote_cidrs: [10.0.0.0/33]\n", want: []string{`filter.remote_cidrs: "10.0.0.0/33" is not a CIDR prefix`}},
		{name: "address without length", file: "filter:\n  remote_cidrs: [10.0.0.1]\n", want: []string{`filter.remote_cidrs: "10.0.0.1" is not a CIDR prefix`}},
		{name: "bad IPv6 CIDR", file: "filter:\n  remote_cidrs: [\"2001:db8::g/32\"]\n", want: []string{`filter.remote_cidrs: "2001:db8::g/32"`}},
		{name: "unknown member", file: "output:\n  tcp_info: [cwnd]\n", want: []string{`output.tcp_info: "cwnd" is not a tcp_info member (did you mean snd_cwnd?)`}},
		{name: "unknown member env", env: map[string]string{"FLOWD_OUTPUT_TCP_INFO": "rtt,bogus"}, want: []string{`output.tcp_info: "bogus" is not a tcp_info member (docs/schema.md lists the members)`, "FLOWD_OUTPUT_TCP_INFO"}},
		{name: "member not a name", file: "output:\n  tcp_info: [[rtt]]\n", want: []string{"output.tcp_info:", "is not a list of values"}},
		{name: "bad CIDR env", env: map[string]string{"FLOWD_FILTER_REMOTE_CIDRS": "10.0.0.0/8,nope"}, want: []string{`filter.remote_cidrs: "nope"`}},

		{name: "unknown cgroup_removed", file: "cgroup_removed: restart\n", want: []string{`cgroup_removed: "restart" is not one of wait, exit`}},
		{name: "cgroup_removed by env", env: map[string]string{"FLOWD_CGROUP_REMOVED": "stop"}, want: []string{`cgroup_removed: "stop" is not one of wait, exit`, "FLOWD_CGROUP_REMOVED"}},
		{name: "unknown log level", file: "log:\n  level: loud\n", want: []string{`log.level: "loud" is not one of trace, debug, info, warn, error`}},
		{name: "unknown log format", file: "log:\n  format: xml\n", want: []string{`log.format: "xml" is not one of text, json`}},
		{name: "unknown output samples", file: "output:\n  samples: some\n", want: []string{`output.samples: "some" is not one of full, changes`}},
		{name: "output samples by env", env: map[string]string{"FLOWD_OUTPUT_SAMPLES": "all"}, want: []string{`output.samples: "all" is not one of full, changes`}},
		{name: "unknown event", file: "output:\n  events: [open, opne]\n", want: []string{`output.events: "opne" is not one of open, sample, state, close`}},
		{name: "no event", file: "output:\n  events: []\n", want: []string{`output.events: empty list`}},
		{name: "events by env", env: map[string]string{"FLOWD_OUTPUT_EVENTS": "open,sample,shut"}, want: []string{`output.events: "shut" is not one of`, "(set by FLOWD_OUTPUT_EVENTS)"}},
		{name: "listen without port", file: "metrics:\n  listen: localhost\n", want: []string{`metrics.listen: "localhost" is not host:port`}},
		{name: "listen bad port", file: "metrics:\n  listen: \":http-alt\"\n", want: []string{`metrics.listen: ":http-alt" has no valid port`}},
		{name: "listen env", env: map[string]string{"FLOWD_METRICS_LISTEN": "9100"}, want: []string{`metrics.listen: "9100" is not host:port`, "(set by FLOWD_METRICS_LISTEN)"}},
		{name: "listen bad IPv4", file: "metrics:\n  listen: 300.1.1.1:9977\n", want: []string{`metrics.listen: "300.1.1.1:9977": "300.1.1.1" is not an IP address`}},
		{name: "listen bad IPv6", file: "metrics:\n  listen: \"[::g]:9977\"\n", want: []string{`metrics.listen: "[::g]:9977": "::g" is not an IP address`}},
		{name: "listen bad name", file: "metrics:\n  listen: \"my host:9977\"\n", want: []string{`"my host" is neither an IP address nor a host name`}},
		{name: "listen port too large", file: "metrics:\n  listen: 127.0.0.1:65536\n", want: []string{`metrics.listen: "127.0.0.1:65536" has no valid port`}},
		{name: "max_cgroups zero", file: "metrics:\n  max_cgroups: 0\n", want: []string{"metrics.max_cgroups: 0 is out of range 1..100000"}},
		{name: "max_cgroups env", env: map[string]string{"FLOWD_METRICS_MAX_CGROUPS": "1000000"}, want: []string{"metrics.max_cgroups: 1000000 is out of range", "FLOWD_METRICS_MAX_CGROUPS"}},
		{name: "max_flows negative", file: "metrics:\n  max_flows: -1\n", want: []string{"metrics.max_flows: -1 is out of range 1..10000"}},
		{name: "max_by too large", file: "metrics:\n  max_by: 100001\n", want: []string{"metrics.max_by: 100001 is out of range"}},
		{name: "unknown by", file: "metrics:\n  by: cgroup\n", want: []string{`metrics.by: "cgroup" is not one of remote_port, remote_prefix, or "" for none`}},
		{name: "by_ipv4_prefix", file: "metrics:\n  by_ipv4_prefix: 33\n", want: []string{"metrics.by_ipv4_prefix: 33 is out of range 0..32"}},
		{name: "by_ipv6_prefix", file: "metrics:\n  by_ipv6_prefix: -1\n", want: []string{"metrics.by_ipv6_prefix: -1 is out of range 0..128"}},
		{name: "per_flow not a bool", file: "metrics:\n  per_flow: maybe\n", want: []string{"metrics.per_flow:", "maybe"}},
		{name: "bpf_stats env", env: map[string]string{"FLOWD_METRICS_BPF_STATS": "on"}, want: []string{"metrics.bpf_stats:", "FLOWD_METRICS_BPF_STATS"}},
		{name: "cgroup a list", file: "cgroup: [a, b]\n", want: []string{`cgroup: ["a", "b"] is not a string`}},

		{name: "output empty", file: "output:\n  path: \"\"\n", want: []string{`output.path: "" is not a path`}},
		{name: "output mode unquoted", file: "output:\n  mode: 0640\n", want: []string{`output.mode: "416" is not a mode in octal with a leading 0 (YAML reads an unquoted 0640 as 416: quote it, "0640")`}},
		{name: "output mode decimal", file: "output:\n  mode: 640\n", want: []string{`output.mode: "640" is not a mode in octal with a leading 0 (e.g. "0640", quoted in the file)`}},
		{name: "output mode not octal", file: "output:\n  mode: \"0689\"\n", want: []string{`output.mode: "0689" is not a mode in octal`}},
		{name: "output mode special bits", file: "output:\n  mode: \"04755\"\n", want: []string{`output.mode: "04755" is not a mode of permission bits`}},
		{name: "output mode read-only", env: map[string]string{"FLOWD_OUTPUT_MODE": "0440"}, want: []string{`output.mode: "0440" does not let flowd read and write`, "FLOWD_OUTPUT_MODE"}},
		{name: "output mode write-only", file: "output:\n  mode: \"0200\"\n", want: []string{`output.mode: "0200" does not let flowd read and write a file it creates (the owner needs rw, e.g. 0600)`}},
		{name: "output mode owner read-only", file: "output:\n  mode: \"0466\"\n", want: []string{`output.mode: "0466" does not let flowd read and write`}},
		{name: "output mode empty", env: map[string]string{"FLOWD_OUTPUT_MODE": ""}, want: []string{`output.mode: "" is not a mode`}},
		{name: "follow symlinks not a bool", file: "output:\n  follow_symlinks: sometimes\n", want: []string{`output.follow_symlinks: "sometimes" is not true or false`}},
		{name: "output empty env", env: map[string]string{"FLOWD_OUTPUT_PATH": ""}, want: []string{`output.path: "" is not a path`, "FLOWD_OUTPUT_PATH"}},
		{name: "output none without OTLP", file: "output:\n  path: none\n", want: []string{`output.path: "none" without output.otlp.endpoint would record nothing`, `"./none"`}},

		{name: "otlp endpoint URL", file: "output:\n  otlp:\n    endpoint: http://collector:4318\n", want: []string{`output.otlp.endpoint: "http://collector:4318" is not host:port`}},
		{name: "otlp endpoint env", env: map[string]string{"FLOWD_OUTPUT_OTLP_ENDPOINT": "collector"}, want: []string{`output.otlp.endpoint: "collector" is not host:port`, "(set by FLOWD_OUTPUT_OTLP_ENDPOINT)"}},
		{name: "otlp protocol", file: "output:\n  otlp:\n    protocol: http/json\n", want: []string{`output.otlp.protocol: "http/json" is not one of grpc, http/protobuf`}},
		{name: "otlp protocol env", env: map[string]string{"FLOWD_OUTPUT_OTLP_PROTOCOL": "http"}, want: []string{`output.otlp.protocol: "http" is not one of grpc, http/protobuf`, "FLOWD_OUTPUT_OTLP_PROTOCOL"}},
		{name: "otlp compression", file: "output:\n  otlp:\n    compression: zstd\n", want: []string{`output.otlp.compression: "zstd" is not one of none, gzip`}},
		{name: "otlp batch_size", file: "output:\n  otlp:\n    batch_size: 2000\n", want: []string{"output.otlp.batch_size: 2000 is not in 1..1024"}},
		{name: "otlp queue_size", env: map[string]string{"FLOWD_OUTPUT_OTLP_QUEUE_SIZE": "10"}, want: []string{"output.otlp.queue_size: 10 is smaller than output.otlp.batch_size (1024)", "FLOWD_OUTPUT_OTLP_QUEUE_SIZE"}},
		{name: "otlp timeout", file: "output:\n  otlp:\n    timeout: 0s\n", want: []string{"output.otlp.timeout: 0s is not greater than 0"}},
		{name: "otlp retry", file: "output:\n  otlp:\n    retry:\n      max_interval: 100ms\n", want: []string{"output.otlp.retry.max_interval: 100ms is smaller than output.otlp.retry.initial_interval (1s)"}},
		{name: "otlp unknown retry key", file: "output:\n  otlp:\n    retry:\n      attempts: 3\n", want: []string{"output.otlp.retry.attempts: unknown key"}},
		{name: "otlp TLS file without TLS", file: "output:\n  otlp:\n    tls:\n      ca_file: /ca.pem\n", want: []string{`output.otlp.tls.ca_file: "/ca.pem" is set but output.otlp.tls.enabled is false`}},
		{name: "otlp metrics_interval", file: "output:\n  otlp:\n    metrics_interval: 10ms\n", want: []string{"output.otlp.metrics_interval: 10ms is neither 0 (no metrics) nor at least 1s"}},
		{name: "otlp header name", file: "output:\n  otlp:\n    headers: {\"bad name\": x}\n", want: []string{`output.otlp.headers: "bad name" is not a header name`}},
		{name: "otlp header names differ in case", file: "output:\n  otlp:\n    headers: {Authorization: a, authorization: b}\n", want: []string{`output.otlp.headers: "Authorization" and "authorization" are the same name`}},
		{name: "otlp headers a list", file: "output:\n  otlp:\n    headers: [a, b]\n", want: []string{`output.otlp.headers: ["a", "b"] is not a mapping`}},
		{name: "otlp headers env", env: map[string]string{"FLOWD_OUTPUT_OTLP_HEADERS": "authorization"}, want: []string{`output.otlp.headers: "authorization" is not name=value`, "FLOWD_OUTPUT_OTLP_HEADERS"}},
		{name: "otlp headers env twice", env: map[string]string{"FLOWD_OUTPUT_OTLP_HEADERS": "A=1,a=2"}, want: []string{`output.otlp.headers: "a" is given twice`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			path := ""
			if tt.file != "" {
				path = writeConfig(t, tt.file)
			}
			c, err := Load(path)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", c)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not match ErrInvalid", err)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Errorf("error %q is not a *config.Error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q is more than one line", err)
			}
		})
	}
}

// TestDidYouMean: an unknown key or variable is reported with the keys it
// probably meant: the same name in another section, else those at most two
// edits away; none when nothing is near.
func TestDidYouMean(t *testing.T) {
	for _, tc := range []struct {
		file string
		env  string
		want string
	}{
		{file: "ebpf:\n  moed: poll\n", want: "ebpf.moed: unknown key (did you mean ebpf.mode?)"},
		{file: "interval: 1s\n", want: "interval: unknown key (did you mean ebpf.interval or netlink.interval?)"},
		{file: "netlink:\n  mode: poll\n", want: "netlink.mode: unknown key (did you mean ebpf.mode or output.mode?)"},
		{file: "ebfp:\n  mode: poll\n", want: "ebfp: unknown key (did you mean ebpf?)"},
		{file: "output:\n  event: [open]\n", want: "output.event: unknown key (did you mean output.events?)"},
		{file: "zzz: 1\n", want: "zzz: unknown key"},
		{file: "filter:\n  cidrs: []\n", want: "filter.cidrs: unknown key (did you mean filter.remote_cidrs?)"},
		{file: "ebpf:\n  bufsize: 4096\n", want: "ebpf.bufsize: unknown key"},
		{env: "FLOWD_EBPF_MOED", want: `environment variable FLOWD_EBPF_MOED="x" sets no config key (did you mean FLOWD_EBPF_MODE?)`},
		{env: "FLOWD_INTERVAL", want: `environment variable FLOWD_INTERVAL="x" sets no config key (did you mean FLOWD_EBPF_INTERVAL or FLOWD_NETLINK_INTERVAL?)`},
		{env: "FLOWD_EBPF_RINGBUFSIZE", want: `environment variable FLOWD_EBPF_RINGBUFSIZE="x" sets no config key (did you mean FLOWD_EBPF_RINGBUF_SIZE?)`},
		{env: "FLOWD_CGROUPS", want: `environment variable FLOWD_CGROUPS="x" sets no config key (did you mean FLOWD_CGROUP or FLOWD_METRICS_MAX_CGROUPS?)`},
		{env: "FLOWD_XYZ", want: `environment variable FLOWD_XYZ="x" sets no config key`},
	} {
		path := ""
		if tc.file != "" {
			path = writeConfig(t, tc.file)
		}
		if tc.env != "" {
			t.Setenv(tc.env, "x")
		}
		if _, err := Load(path); err == nil || err.Error() != tc.want {
			t.Errorf("%q%s: %v, want %s", tc.file, tc.env, err, tc.want)
		}
		if tc.env != "" {
			os.Unsetenv(tc.env)
		}
	}
}

func TestMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(path)
	if !errors.Is(err, ErrInvalid) || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
		t.Errorf("Load(%s) error = %v, want a config error naming the file", path, err)
	}
}

// TestEmptyValues: a section or key without a value keeps its defaults.
func TestEmptyValues(t *testing.T) {
	for _, content := range []string{"", "# nothing\n", "ebpf:\nfilter:\n  local_ports:\n", "log: {}\nbackends:\n"} {
		c, err := Load(writeConfig(t, content))
		if err != nil {
			t.Errorf("%q: %v", content, err)
			continue
		}
		if want := defaults(); !reflect.DeepEqual(c, want) {
			t.Errorf("%q: got %+v, want the defaults", content, c)
		}
	}
}

// TestEnvOverridesEmptySection: an empty section in the file must not hide
// the environment (a viper pitfall).
func TestEnvOverridesEmptySection(t *testing.T) {
	t.Setenv("FLOWD_EBPF_MODE", "transition")
	c, err := Load(writeConfig(t, "ebpf:\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.EBPF.Mode != "transition" {
		t.Errorf("ebpf.mode = %q, want transition from the environment", c.EBPF.Mode)
	}
}

// TestYAMLRoundTrip: the printed config sets every key and loads back to
// the same Config.
func TestYAMLRoundTrip(t *testing.T) {
	c := defaults()
	c.Backends = []Backend{"netlink", "ebpf"}
	c.Cgroup = "/sys/fs/cgroup/system.slice"
	c.EBPF.Interval = 1500 * time.Millisecond
	c.EBPF.Mode = "transition"
	c.EBPF.IdleInterval = 0
	c.EBPF.MaxFlows = 1000
	c.Netlink.Netns = "/run/netns/blue"
	c.Filter.LocalPorts = []Port{5201}
	c.Filter.RemoteCIDRs = []netip.Prefix{netip.MustParsePrefix("::/0"), netip.MustParsePrefix("10.0.0.0/8")}
	c.Metrics.Listen = ":9100"
	c.Log.Level = "warn"
	c.Output.TCPInfo = []flow.Field{flow.FieldRTT, flow.FieldSndCwnd}
	c.Output.Samples = "changes"
	c.Output.Mode = 0o640
	c.Output.FollowSymlinks = true
	c.Output.OTLP.Endpoint = "collector.example:4317"
	c.Output.OTLP.Headers = map[string]string{"authorization": "Bearer abc"}
	c.Output.OTLP.TLS = otlpconfig.TLS{Enabled: true, CAFile: "/etc/flowd/ca.pem"}
	c.Output.OTLP.MetricsInterval = 0
	b, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys() {
		leaf := k[strings.LastIndex(k, ".")+1:]
		if !strings.Contains(string(b), leaf+":") {
			t.Errorf("printed config lacks %s:\n%s", k, b)
		}
	}
	got, err := Load(writeConfig(t, string(b)))
	if err != nil {
		t.Fatalf("loading printed config: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip: got %+v, want %+v\n%s", got, c, b)
	}
}

func TestEnvVar(t *testing.T) {
	for key, want := range map[string]string{
		"ebpf.ringbuf_size": "FLOWD_EBPF_RINGBUF_SIZE",
		"backends":          "FLOWD_BACKENDS",
		"a-b.c":             "FLOWD_A_B_C",
	} {
		if got := EnvVar(key); got != want {
			t.Errorf("EnvVar(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestRingbufPageSize(t *testing.T) {
	page := os.Getpagesize()
	c, err := Load(writeConfig(t, "ebpf:\n  ringbuf_size: "+strconv.Itoa(page)+"\n"))
	if err != nil {
		t.Fatalf("one page: %v", err)
	}
	if c.EBPF.RingbufSize != page {
		t.Errorf("ringbuf_size = %d, want %d", c.EBPF.RingbufSize, page)
	}
}
