// Package config is flowd's configuration: the Config struct, whose yaml
// tags are the keys of the config file, of the FLOWD_* environment
// variables (FLOWD_EBPF_MODE sets ebpf.mode) and of flags; its defaults
// (Default) and checks (Validate); and Load, which merges them with viper.
// It checks values, not the machine: whether the cgroup exists or the
// output can be written is found out when flowd starts.
//
// Adding a key: a field with a yaml tag (a struct field is a section of
// keys), its default in Default, its check in Validate and its line in
// configs/flowd.yaml. Values other than strings, numbers, durations, CIDR
// prefixes and lists of them are types that implement
// encoding.TextUnmarshaler, as the enums below do.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

// Config is flowd's configuration.
type Config struct {
	Backends      []Backend     `yaml:"backends,flow"`  // no duplicates; auto stands alone
	Cgroup        string        `yaml:"cgroup"`         // cgroup2 directory, relative to the mount or absolute; "" = the root
	CgroupRemoved CgroupRemoved `yaml:"cgroup_removed"` // what the backends do when the cgroup is removed
	EBPF          EBPF          `yaml:"ebpf"`
	Netlink       Netlink       `yaml:"netlink"`
	Filter        Filter        `yaml:"filter"`
	Output        Output        `yaml:"output"`
	Log           Log           `yaml:"log"`
	Metrics       Metrics       `yaml:"metrics"`

	setBy map[string]string // keys set by the environment or a flag: FLOWD_EBPF_MODE, --log-level
}

// EBPF configures the eBPF sockops backend.
type EBPF struct {
	Mode          EBPFMode      `yaml:"mode"`
	Interval      time.Duration `yaml:"interval"`       // >= 0; 0 = senders on every RTT callback, the others every flush_interval
	IdleInterval  time.Duration `yaml:"idle_interval"`  // >= 0; 0 = no samples of flows that did not move
	MaxFlows      int           `yaml:"max_flows"`      // flows tracked at once, 1..ebpfMaxFlows
	RingbufSize   int           `yaml:"ringbuf_size"`   // bytes; a power of two, at least a page
	FlushInterval time.Duration `yaml:"flush_interval"` // >= minFlushInterval
}

// Netlink configures the inet_diag backend.
type Netlink struct {
	Interval time.Duration `yaml:"interval"` // >= minNetlinkInterval
	Netns    string        `yaml:"netns"`    // network namespace file; "" = flowd's own and the cgroup's processes'
}

// Filter selects the flows both backends report.
type Filter struct {
	LocalPorts  []Port         `yaml:"local_ports,flow"`
	RemotePorts []Port         `yaml:"remote_ports,flow"`
	RemoteCIDRs []netip.Prefix `yaml:"remote_cidrs,flow"` // masked
}

// Output says where records go and what they hold.
type Output struct {
	Path           string            `yaml:"path"`            // "-" = standard output, PathNone = no file; a file is opened for append
	Mode           FileMode          `yaml:"mode"`            // permissions of a file flowd creates; the owner may read and write
	FollowSymlinks bool              `yaml:"follow_symlinks"` // else a symbolic link at path is refused
	TCPInfo        []flow.Field      `yaml:"tcp_info,flow"`   // the members written; none = every member
	Samples        Samples           `yaml:"samples"`
	Events         []flow.Event      `yaml:"events,flow"` // the events written; at least one
	OTLP           otlpconfig.Config `yaml:"otlp"`        // records (and TCP metrics) over OTLP; off without an endpoint
}

// PathNone is the output.path of no JSON Lines file, for a flowd that
// exports over OTLP only; a file named none is written "./none".
const PathNone = "none"

// Log configures flowd's own log, on standard error.
type Log struct {
	Level  LogLevel  `yaml:"level"`
	Format LogFormat `yaml:"format"`
}

// Metrics configures the Prometheus endpoint and what it exports.
type Metrics struct {
	Listen       string    `yaml:"listen"`         // host:port; "" = none
	MaxCgroups   int       `yaml:"max_cgroups"`    // cgroups with series of their own, per backend
	By           MetricsBy `yaml:"by"`             // a second aggregation of the TCP metrics
	ByIPv4Prefix int       `yaml:"by_ipv4_prefix"` // prefix length for by: remote_prefix, 0..32
	ByIPv6Prefix int       `yaml:"by_ipv6_prefix"` // prefix length for by: remote_prefix, 0..128
	MaxBy        int       `yaml:"max_by"`         // remote ports or prefixes with series of their own, per backend
	PerFlow      bool      `yaml:"per_flow"`       // gauges of the busiest flows
	MaxFlows     int       `yaml:"max_flows"`      // how many of them
	BPFStats     bool      `yaml:"bpf_stats"`      // enable and export the kernel's BPF program statistics
}

// Default returns the configuration of a flowd given no file, variable or
// flag; configs/flowd.yaml writes it down.
func Default() *Config {
	return &Config{
		Backends:      []Backend{BackendAuto},
		CgroupRemoved: CgroupRemovedWait,
		EBPF: EBPF{Mode: "poll", Interval: time.Second, IdleInterval: time.Minute, MaxFlows: 1 << 16,
			RingbufSize: 8 << 20, FlushInterval: 100 * time.Millisecond},
		Netlink: Netlink{Interval: time.Second},
		Filter:  Filter{LocalPorts: []Port{}, RemotePorts: []Port{}, RemoteCIDRs: []netip.Prefix{}},
		Output: Output{
			Path:    "-",
			Mode:    0o600,
			TCPInfo: []flow.Field{},
			Samples: "full",
			Events:  []flow.Event{flow.EventOpen, flow.EventSample, flow.EventState, flow.EventClose},
			OTLP:    otlpconfig.Default(),
		},
		Log:     Log{Level: "info", Format: "text"},
		Metrics: Metrics{MaxCgroups: 1000, ByIPv4Prefix: 24, ByIPv6Prefix: 64, MaxBy: 100, MaxFlows: 100},
	}
}

// Backend is an item of the backends list: a backend's name, or auto (ebpf
// where this kernel and flowd's privileges allow it, netlink otherwise).
type Backend string

// BackendAuto is the item of the backends list that lets flowd choose.
const BackendAuto Backend = "auto"

func (b *Backend) UnmarshalText(text []byte) error {
	return oneOf(b, text, BackendAuto, flow.BackendEBPF, flow.BackendNetlink)
}

// CgroupRemoved says what flowd does when the configured cgroup is
// removed while it runs: wait for a cgroup at the same path and record its
// flows (the removed one's that outlive it are recorded until they close),
// or exit with an error.
type CgroupRemoved string

const (
	CgroupRemovedWait CgroupRemoved = "wait"
	CgroupRemovedExit CgroupRemoved = "exit"
)

func (c *CgroupRemoved) UnmarshalText(text []byte) error {
	return oneOf(c, text, CgroupRemovedWait, CgroupRemovedExit)
}

// EBPFMode says when the BPF program sends records (ebpf.Mode).
type EBPFMode string

func (m *EBPFMode) UnmarshalText(text []byte) error { return oneOf(m, text, "poll", "transition") }

// MetricsBy is the second aggregation of the TCP metrics: "" (none),
// remote_port or remote_prefix (tcpstats.By).
type MetricsBy string

func (b *MetricsBy) UnmarshalText(text []byte) error {
	if len(text) == 0 {
		*b = ""
		return nil
	}
	if err := oneOf(b, text, "remote_port", "remote_prefix"); err != nil {
		return fmt.Errorf(`%w, or "" for none`, err)
	}
	return nil
}

// Samples says what a sample line's tcp_info holds (sink.Samples).
type Samples string

func (s *Samples) UnmarshalText(text []byte) error { return oneOf(s, text, "full", "changes") }

// LogLevel is the least severe level logged, as logrus names it.
type LogLevel string

func (l *LogLevel) UnmarshalText(text []byte) error {
	return oneOf(l, text, "trace", "debug", "info", "warn", "error")
}

// LogFormat is how log lines are written.
type LogFormat string

func (f *LogFormat) UnmarshalText(text []byte) error { return oneOf(f, text, "text", "json") }

// oneOf sets *v to text if it is one of allowed.
func oneOf[T ~string](v *T, text []byte, allowed ...T) error {
	if !slices.Contains(allowed, T(text)) {
		return fmt.Errorf("%q is not one of %s", text, join(allowed))
	}
	*v = T(text)
	return nil
}

func join[T ~string](items []T) string {
	s := make([]string, len(items))
	for i, it := range items {
		s[i] = string(it)
	}
	return strings.Join(s, ", ")
}

// FileMode is a file's permission bits, written in octal with a leading 0
// ("0640"). YAML reads an unquoted 0640 as the number 416 and 640 as six
// hundred and forty, so a number is refused: the file must quote the mode.
type FileMode uint32

func (m *FileMode) UnmarshalText(text []byte) error {
	s := string(text)
	digits, ok := strings.CutPrefix(s, "0o")
	if !ok {
		digits, ok = strings.CutPrefix(s, "0")
	}
	n, err := strconv.ParseUint(digits, 8, 32)
	if !ok || err != nil || digits == "" {
		if d, err := strconv.ParseUint(s, 10, 32); err == nil && d <= 0o777 {
			// Most likely YAML's reading of an unquoted octal number.
			return fmt.Errorf("%q is not a mode in octal with a leading 0 (YAML reads an unquoted %#o as %d: quote it, \"%04o\")", text, d, d, d)
		}
		return fmt.Errorf("%q is not a mode in octal with a leading 0 (e.g. \"0640\", quoted in the file)", text)
	}
	if n > 0o777 {
		return fmt.Errorf("%q is not a mode of permission bits (0 to 0777)", text)
	}
	*m = FileMode(n)
	return nil
}

func (m FileMode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// String returns the mode as the file writes it: "0640".
func (m FileMode) String() string { return fmt.Sprintf("%04o", uint32(m)) }

// Port is a TCP port number, 1 to 65535.
type Port uint16

func (p *Port) UnmarshalText(text []byte) error {
	n, err := strconv.ParseInt(strings.TrimSpace(string(text)), 10, 64)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a port number", text)
	case n < 1 || n > 65535:
		return fmt.Errorf("%d is out of range 1..65535", n)
	}
	*p = Port(n)
	return nil
}

// ebpfMaxFlows is the most flows the eBPF backend tracks at once: its
// flow table has one 96-byte slot per flow, allocated up front.
const ebpfMaxFlows = 1 << 24

// maxRingbufSize is the largest power of two a BPF map's u32 max_entries holds.
const maxRingbufSize = 1 << 31

// The shortest periods of work: below them a timer fires so often that it
// keeps a core busy doing nearly nothing each time.
const (
	minFlushInterval   = time.Millisecond
	minNetlinkInterval = 10 * time.Millisecond // a dump walks the kernel's TCP table per namespace
)

// Validate checks the values alone and together. Decoding (Load) has
// checked what each type can: the enums, ports, prefixes and member names.
func (c *Config) Validate() error {
	if len(c.Backends) == 0 {
		return c.Invalid("backends", nil, "empty list: name auto, ebpf or netlink")
	}
	for i, b := range c.Backends {
		if slices.Contains(c.Backends[:i], b) {
			return c.Invalid("backends", nil, "%q is listed twice", b)
		}
	}
	if len(c.Backends) > 1 && slices.Contains(c.Backends, BackendAuto) {
		return c.Invalid("backends", nil, "%q cannot be combined with other backends (got %s)", BackendAuto, join(c.Backends))
	}

	if d := c.EBPF.Interval; d < 0 {
		return c.Invalid("ebpf.interval", nil, "%s is not 0 or more", d)
	}
	if d := c.EBPF.IdleInterval; d < 0 {
		return c.Invalid("ebpf.idle_interval", nil, "%s is not 0 or more", d)
	}
	if n := c.EBPF.MaxFlows; n < 1 || n > ebpfMaxFlows {
		return c.Invalid("ebpf.max_flows", nil, "%d is out of range 1..%d", n, ebpfMaxFlows)
	}
	page := os.Getpagesize()
	switch n := c.EBPF.RingbufSize; {
	case n < page:
		return c.Invalid("ebpf.ringbuf_size", nil, "%d is smaller than the page size (%d bytes)", n, page)
	case n&(n-1) != 0:
		return c.Invalid("ebpf.ringbuf_size", nil, "%d is not a power of two", n)
	case n%page != 0:
		return c.Invalid("ebpf.ringbuf_size", nil, "%d is not a multiple of the page size (%d bytes)", n, page)
	case n > maxRingbufSize:
		return c.Invalid("ebpf.ringbuf_size", nil, "%d is larger than %d", n, maxRingbufSize)
	}
	if d := c.EBPF.FlushInterval; d < minFlushInterval {
		return c.Invalid("ebpf.flush_interval", nil, "%s is shorter than %s", d, minFlushInterval)
	}
	if d := c.Netlink.Interval; d < minNetlinkInterval {
		return c.Invalid("netlink.interval", nil, "%s is shorter than %s", d, minNetlinkInterval)
	}

	if c.Output.Path == "" {
		return c.Invalid("output.path", nil, `"" is not a path (use "-" for standard output)`)
	}
	if c.Output.Path == PathNone && !c.Output.OTLP.Enabled() {
		return c.Invalid("output.path", nil, `%q without output.otlp.endpoint would record nothing (a file named none is written "./none")`, PathNone)
	}
	if e := (*otlpconfig.Error)(nil); errors.As(c.Output.OTLP.Validate(), &e) {
		return c.Invalid(e.Key, e.Err, "%s", e.Msg)
	}
	// The owner reads too: at the next start or reopen, flowd reads the
	// file's end to remove a partial last line, and as a service it has
	// no CAP_DAC_OVERRIDE to read a file whose mode refuses it.
	if m := c.Output.Mode; m&0o600 != 0o600 {
		return c.Invalid("output.mode", nil, "%q does not let flowd read and write a file it creates (the owner needs rw, e.g. 0600)", m)
	}
	if len(c.Output.Events) == 0 {
		return c.Invalid("output.events", nil, "empty list: name one or more of open, sample, state, close")
	}
	return c.validateMetrics()
}

// Bounds of the metrics' limits: larger values are typos more likely
// than series a Prometheus server wants.
const (
	maxMetricsSeries = 100_000
	maxMetricsFlows  = 10_000
)

func (c *Config) validateMetrics() error {
	m := &c.Metrics
	if s := m.Listen; s != "" {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			return c.Invalid("metrics.listen", nil, "%q is not host:port (e.g. 127.0.0.1:9977, [::1]:9977, or :9977 for every interface)", s)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return c.Invalid("metrics.listen", nil, "%q has no valid port number", s)
		}
		if msg := checkHost(host); msg != "" {
			return c.Invalid("metrics.listen", nil, "%q: %s", s, msg)
		}
	}
	for _, lim := range []struct {
		key     string
		v, most int
	}{
		{"metrics.max_cgroups", m.MaxCgroups, maxMetricsSeries},
		{"metrics.max_by", m.MaxBy, maxMetricsSeries},
		{"metrics.max_flows", m.MaxFlows, maxMetricsFlows},
	} {
		if lim.v < 1 || lim.v > lim.most {
			return c.Invalid(lim.key, nil, "%d is out of range 1..%d", lim.v, lim.most)
		}
	}
	if n := m.ByIPv4Prefix; n < 0 || n > 32 {
		return c.Invalid("metrics.by_ipv4_prefix", nil, "%d is out of range 0..32", n)
	}
	if n := m.ByIPv6Prefix; n < 0 || n > 128 {
		return c.Invalid("metrics.by_ipv6_prefix", nil, "%d is out of range 0..128", n)
	}
	return nil
}

// checkHost says what is wrong with the host of a listen address, "" if
// nothing: it is empty (every interface), an IP address, or a host name.
// Whether it is an address of this host, or a name that resolves, is
// found out when flowd binds it.
func checkHost(host string) string {
	if host == "" {
		return ""
	}
	if strings.Contains(host, ":") || strings.Trim(host, "0123456789.") == "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Sprintf("%q is not an IP address", host)
		}
		return ""
	}
	if len(host) > 253 {
		return "the host name is longer than 253 characters"
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" || len(label) > 63 || strings.Trim(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != "" {
			return fmt.Sprintf("%q is neither an IP address nor a host name", host)
		}
	}
	return ""
}

// ErrInvalid is matched (errors.Is) by every error about the configuration
// itself, as opposed to a failure of the machine.
var ErrInvalid = errors.New("invalid configuration")

// Error is a configuration error:
// `ebpf.mode: "fast" is not one of poll, transition (set by FLOWD_EBPF_MODE)`.
type Error struct {
	Key    string // dotted key, e.g. "ebpf.mode"; "" when the file itself is at fault
	Msg    string // what is wrong, quoting the bad value
	Source string // where the value was set when not in the file: FLOWD_EBPF_MODE, --log-level
	Err    error  // the cause, if any
}

func (e *Error) Error() string {
	s := e.Msg
	if e.Key != "" {
		s = e.Key + ": " + s
	}
	if e.Source != "" {
		s += " (set by " + e.Source + ")"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes every *Error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Invalid returns the error about key's value, naming where it was set.
// Checks of the machine when flowd starts (is the cgroup there?) use it too.
func (c *Config) Invalid(key string, cause error, format string, args ...any) *Error {
	return &Error{Key: key, Msg: fmt.Sprintf(format, args...), Source: c.setBy[key], Err: cause}
}
