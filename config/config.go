// Package config loads flowd's configuration: defaults, then a YAML file,
// then FLOWD_* environment variables, then command-line flags. The merged
// values are copied once into a typed Config and validated there; every
// error names the key and the bad value.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

// Config keys, in the order flowd prints them.
const (
	KeyBackends          = "backends"
	KeyCgroup            = "cgroup"
	KeyEBPFMode          = "ebpf.mode"
	KeyEBPFInterval      = "ebpf.interval"
	KeyEBPFRingbufSize   = "ebpf.ringbuf_size"
	KeyEBPFFlushInterval = "ebpf.flush_interval"
	KeyNetlinkInterval   = "netlink.interval"
	KeyNetlinkNetns      = "netlink.netns"
	KeyLocalPorts        = "filter.local_ports"
	KeyRemotePorts       = "filter.remote_ports"
	KeyRemoteCIDRs       = "filter.remote_cidrs"
	KeyOutputPath        = "output.path"
	KeyOutputTCPInfo     = "output.tcp_info"
	KeyOutputSamples     = "output.samples"
	KeyLogLevel          = "log.level"
	KeyLogFormat         = "log.format"
	KeyMetricsListen     = "metrics.listen"
)

// Backend names accepted in the backends list.
const (
	BackendAuto    = "auto"
	BackendEBPF    = "ebpf"
	BackendNetlink = "netlink"
)

// Stdout is the output.path that means standard output.
const Stdout = "-"

// EnvPrefix is the prefix of the environment variables that set keys.
const EnvPrefix = "FLOWD"

// Config is flowd's validated configuration.
type Config struct {
	Backends []string // "auto", or one or more of "ebpf", "netlink"; no duplicates
	Cgroup   string   // absolute cgroup2 directory (resolved; the cgroup2 root by default)
	EBPF     EBPF
	Netlink  Netlink
	Filter   Filter
	Output   Output
	Log      Log
	Metrics  Metrics
}

// EBPF configures the eBPF sockops backend.
type EBPF struct {
	Mode          ebpf.Mode
	Interval      time.Duration // >= 0; 0 = a sample on every RTT callback
	RingbufSize   int           // bytes; a power of two, at least one page
	FlushInterval time.Duration // > 0
}

// Netlink configures the inet_diag backend.
type Netlink struct {
	Interval time.Duration // > 0
	Netns    string        // network namespace file; "" = flowd's own
}

// Filter selects the flows both backends report.
type Filter struct {
	LocalPorts  []uint16
	RemotePorts []uint16
	RemoteCIDRs []netip.Prefix // masked
}

// Output says where records go and what they hold.
type Output struct {
	Path    string       // Stdout ("-") or a file opened for append
	TCPInfo []flow.Field // the tcp_info members written; none = every member
	Samples sink.Samples // what a sample line's tcp_info holds
}

// Log configures flowd's own log (on stderr).
type Log struct {
	Level  string // trace, debug, info, warn or error
	Format string // text or json
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	Listen string // host:port; "" = disabled
}

// ErrInvalid is matched (errors.Is) by every error Load returns because of
// the configuration itself, as opposed to a failure of the machine.
var ErrInvalid = errors.New("invalid configuration")

// Error is a configuration error. Error() reads
// `ebpf.mode: "fast" is not one of poll, transition`.
type Error struct {
	Key    string // dotted key, e.g. "ebpf.mode"; "" when the file itself is at fault
	Msg    string // what is wrong, quoting the bad value
	Source string // where a bad value came from when not the file, e.g. "FLOWD_EBPF_MODE"
	Err    error  // the underlying cause, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Source != "" {
		b.WriteString(" (set by ")
		b.WriteString(e.Source)
		b.WriteString(")")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalid) true for every *Error.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// setting is one key with its default, in the form a YAML file would hold it.
type setting struct {
	key string
	def any
}

func settings() []setting {
	return []setting{
		{KeyBackends, []string{BackendAuto}},
		{KeyCgroup, ""},
		{KeyEBPFMode, string(ebpf.ModePoll)},
		{KeyEBPFInterval, "1s"},
		{KeyEBPFRingbufSize, 4 << 20},
		{KeyEBPFFlushInterval, "100ms"},
		{KeyNetlinkInterval, "1s"},
		{KeyNetlinkNetns, ""},
		{KeyLocalPorts, []int{}},
		{KeyRemotePorts, []int{}},
		{KeyRemoteCIDRs, []string{}},
		{KeyOutputPath, Stdout},
		{KeyOutputTCPInfo, []string{}},
		{KeyOutputSamples, sink.SamplesChanges.String()},
		{KeyLogLevel, "info"},
		{KeyLogFormat, "text"},
		{KeyMetricsListen, ""},
	}
}

// Keys returns every config key, in the order flowd prints them.
func Keys() []string {
	s := settings()
	keys := make([]string, len(s))
	for i := range s {
		keys[i] = s[i].key
	}
	return keys
}

// EnvVar returns the environment variable that sets key, e.g.
// FLOWD_EBPF_RINGBUF_SIZE for ebpf.ringbuf_size.
func EnvVar(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(envReplacer().Replace(key))
}

func envReplacer() *strings.Replacer { return strings.NewReplacer(".", "_", "-", "_") }

// Option changes how Load reads the configuration.
type Option func(*loader)

// WithFlag makes a command-line flag override key when it was given on the
// command line. A nil flag is ignored.
func WithFlag(key string, f *pflag.Flag) Option {
	return func(l *loader) {
		if f != nil {
			l.flags[key] = f
		}
	}
}

// Load reads the configuration: defaults, then the YAML file at path (none
// when path is ""), then FLOWD_* environment variables, then the flags given
// with WithFlag. Errors about the configuration match ErrInvalid.
func Load(path string, opts ...Option) (*Config, error) {
	l := &loader{v: viper.New(), path: path, flags: map[string]*pflag.Flag{}, inFile: map[string]bool{}}
	for _, o := range opts {
		o(l)
	}
	return l.load()
}

// loader holds the state of one Load call.
type loader struct {
	v      *viper.Viper
	path   string
	flags  map[string]*pflag.Flag
	inFile map[string]bool
}

func (l *loader) load() (*Config, error) {
	v := l.v
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(envReplacer())
	v.AllowEmptyEnv(true)
	v.AutomaticEnv()
	for _, s := range settings() {
		v.SetDefault(s.key, s.def)
	}
	if l.path != "" {
		m, err := l.readFile()
		if err != nil {
			return nil, err
		}
		if err := v.MergeConfigMap(m); err != nil {
			return nil, &Error{Msg: fmt.Sprintf("reading config file %s", l.path), Err: err}
		}
	}
	if err := checkEnv(os.Environ()); err != nil {
		return nil, err
	}
	for _, key := range Keys() {
		if f, ok := l.flags[key]; ok {
			if err := v.BindPFlag(key, f); err != nil {
				return nil, fmt.Errorf("binding flag --%s: %w", f.Name, err)
			}
		}
	}
	return l.decode()
}

// readFile parses the YAML file and checks its shape: only known sections
// and keys, sections are mappings. Keys without a value are dropped, so that
// they keep their defaults.
func (l *loader) readFile() (map[string]any, error) {
	data, err := os.ReadFile(l.path)
	if err != nil {
		return nil, &Error{Msg: "reading config file", Err: err}
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{Msg: fmt.Sprintf("parsing config file %s", l.path), Err: err}
	}
	if doc == nil {
		return map[string]any{}, nil
	}
	top, ok := doc.(map[string]any)
	if !ok {
		return nil, &Error{Msg: fmt.Sprintf("config file %s does not hold a mapping of keys", l.path)}
	}
	known := map[string]bool{}
	sections := map[string]bool{}
	for _, k := range Keys() {
		known[k] = true
		if sec, _, ok := strings.Cut(k, "."); ok {
			sections[sec] = true
		}
	}
	out := map[string]any{}
	for _, k := range sortedKeys(top) {
		val := top[k]
		switch {
		case known[k] && !strings.Contains(k, "."):
			if val != nil {
				out[k] = val
				l.inFile[k] = true
			}
		case sections[k]:
			if val == nil {
				continue
			}
			sec, ok := val.(map[string]any)
			if !ok {
				return nil, &Error{Key: k, Msg: fmt.Sprintf("%s is not a mapping of keys", formatValue(val))}
			}
			clean := map[string]any{}
			for _, sk := range sortedKeys(sec) {
				full := k + "." + sk
				if !known[full] {
					return nil, &Error{Key: full, Msg: "unknown key"}
				}
				if sec[sk] != nil {
					clean[sk] = sec[sk]
					l.inFile[full] = true
				}
			}
			if len(clean) > 0 {
				out[k] = clean
			}
		default:
			return nil, &Error{Key: k, Msg: "unknown key"}
		}
	}
	return out, nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// checkEnv rejects FLOWD_* variables that set no key: a typo there would
// otherwise be silently ignored.
func checkEnv(environ []string) error {
	known := map[string]bool{}
	for _, k := range Keys() {
		known[EnvVar(k)] = true
	}
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, EnvPrefix+"_") && !known[name] {
			return &Error{Msg: fmt.Sprintf("environment variable %s=%q sets no config key", name, val)}
		}
	}
	return nil
}

// errorf returns an *Error about key that says where the value came from.
func (l *loader) errorf(key string, cause error, format string, args ...any) *Error {
	return &Error{Key: key, Msg: fmt.Sprintf(format, args...), Source: l.source(key), Err: cause}
}

// source names where key's value came from when that is a flag or an
// environment variable; "" for the config file and the defaults.
func (l *loader) source(key string) string {
	if f, ok := l.flags[key]; ok && f.Changed {
		return "--" + f.Name
	}
	if _, ok := os.LookupEnv(EnvVar(key)); ok {
		return EnvVar(key)
	}
	return ""
}

func (l *loader) decode() (*Config, error) {
	var (
		c   Config
		err error
	)
	if c.Backends, err = l.backends(); err != nil {
		return nil, err
	}

	mode, err := l.oneOf(KeyEBPFMode, string(ebpf.ModePoll), string(ebpf.ModeTransition))
	if err != nil {
		return nil, err
	}
	c.EBPF.Mode = ebpf.Mode(mode)
	if c.EBPF.Interval, err = l.duration(KeyEBPFInterval, true); err != nil {
		return nil, err
	}
	if c.EBPF.RingbufSize, err = l.ringbufSize(); err != nil {
		return nil, err
	}
	if c.EBPF.FlushInterval, err = l.duration(KeyEBPFFlushInterval, false); err != nil {
		return nil, err
	}
	if c.Netlink.Interval, err = l.duration(KeyNetlinkInterval, false); err != nil {
		return nil, err
	}

	if c.Filter.LocalPorts, err = l.ports(KeyLocalPorts); err != nil {
		return nil, err
	}
	if c.Filter.RemotePorts, err = l.ports(KeyRemotePorts); err != nil {
		return nil, err
	}
	if c.Filter.RemoteCIDRs, err = l.cidrs(KeyRemoteCIDRs); err != nil {
		return nil, err
	}

	if c.Output.TCPInfo, err = l.members(KeyOutputTCPInfo); err != nil {
		return nil, err
	}
	samples, err := l.oneOf(KeyOutputSamples, sink.SamplesChanges.String(), sink.SamplesFull.String())
	if err != nil {
		return nil, err
	}
	c.Output.Samples, _ = sink.ParseSamples(samples)

	if c.Log.Level, err = l.oneOf(KeyLogLevel, "trace", "debug", "info", "warn", "error"); err != nil {
		return nil, err
	}
	if c.Log.Format, err = l.oneOf(KeyLogFormat, "text", "json"); err != nil {
		return nil, err
	}
	if c.Metrics.Listen, err = l.listen(KeyMetricsListen); err != nil {
		return nil, err
	}

	// Checks that look at the machine come last, so that a typo elsewhere
	// is reported without touching the file system.
	if c.Cgroup, err = l.cgroup(KeyCgroup); err != nil {
		return nil, err
	}
	if c.Output.Path, err = l.output(KeyOutputPath); err != nil {
		return nil, err
	}
	if c.Netlink.Netns, err = l.netns(KeyNetlinkNetns); err != nil {
		return nil, err
	}
	return &c, nil
}

// netns checks that key names a network namespace file (or is empty).
func (l *loader) netns(key string) (string, error) {
	path, err := l.str(key)
	if err != nil || path == "" {
		return path, err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "", l.errorf(key, nil, "%q: %v", path, err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		return "", l.errorf(key, nil, "%q is not a network namespace file (e.g. /run/netns/NAME or /proc/PID/ns/net)", path)
	}
	return path, nil
}

// str returns key's value as a string. Other scalars (a YAML number, say)
// are taken as written; lists and mappings are errors.
func (l *loader) str(key string) (string, error) {
	switch v := l.v.Get(key).(type) {
	case string:
		return v, nil
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), nil
	default:
		return "", l.errorf(key, nil, "%s is not a string", formatValue(v))
	}
}

// list returns key's value as a list of scalars. A string (from the
// environment, or a single value in the file) is split at commas and
// white space.
func (l *loader) list(key string) ([]any, error) {
	switch v := l.v.Get(key).(type) {
	case nil:
		return nil, nil
	case string:
		var out []any
		for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
			out = append(out, f)
		}
		return out, nil
	case []any:
		for _, e := range v {
			switch e.(type) {
			case map[string]any, []any, nil:
				return nil, l.errorf(key, nil, "%s is not a list of values", formatValue(v))
			}
		}
		return v, nil
	case []string:
		out := make([]any, len(v))
		for i := range v {
			out[i] = v[i]
		}
		return out, nil
	case []int:
		out := make([]any, len(v))
		for i := range v {
			out[i] = v[i]
		}
		return out, nil
	case int, int64, uint64:
		return []any{v}, nil
	default:
		return nil, l.errorf(key, nil, "%s is not a list", formatValue(v))
	}
}

func (l *loader) oneOf(key string, allowed ...string) (string, error) {
	s, err := l.str(key)
	if err != nil {
		return "", err
	}
	if !slices.Contains(allowed, s) {
		return "", l.errorf(key, nil, "%q is not one of %s", s, strings.Join(allowed, ", "))
	}
	return s, nil
}

func (l *loader) backends() ([]string, error) {
	items, err := l.list(KeyBackends)
	if err != nil {
		return nil, err
	}
	if len(items) == 0 {
		return nil, l.errorf(KeyBackends, nil, "empty list: name auto, ebpf or netlink")
	}
	var out []string
	for _, it := range items {
		s := fmt.Sprint(it)
		switch s {
		case BackendAuto, BackendEBPF, BackendNetlink:
		default:
			return nil, l.errorf(KeyBackends, nil, "%q is not one of auto, ebpf, netlink", s)
		}
		if slices.Contains(out, s) {
			return nil, l.errorf(KeyBackends, nil, "%q is listed twice", s)
		}
		out = append(out, s)
	}
	if len(out) > 1 && slices.Contains(out, BackendAuto) {
		return nil, l.errorf(KeyBackends, nil, "%q cannot be combined with other backends (got %s)", BackendAuto, strings.Join(out, ", "))
	}
	return out, nil
}

// duration parses a Go duration string. A bare 0 is accepted; other bare
// numbers are errors, since their unit would be a guess.
func (l *loader) duration(key string, zeroOK bool) (time.Duration, error) {
	var d time.Duration
	switch v := l.v.Get(key).(type) {
	case string:
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, l.errorf(key, nil, "%q is not a duration (use a unit, e.g. 500ms, 2s)", v)
		}
	case int:
		if v != 0 {
			return 0, l.errorf(key, nil, "%d is not a duration (use a unit, e.g. \"%ds\")", v, v)
		}
	default:
		return 0, l.errorf(key, nil, "%s is not a duration (use a unit, e.g. 500ms, 2s)", formatValue(v))
	}
	if d < 0 || (d == 0 && !zeroOK) {
		want := "greater than 0"
		if zeroOK {
			want = "0 or more"
		}
		return 0, l.errorf(key, nil, "%s is not %s", d, want)
	}
	return d, nil
}

// integer returns key's value as an integer; strings (from the
// environment) must hold a decimal integer.
func (l *loader) integer(key string, v any) (int64, error) {
	switch n := v.(type) {
	case int:
		return int64(n), nil
	case int64:
		return n, nil
	case uint64:
		if n > 1<<63-1 {
			return 0, l.errorf(key, nil, "%d is too large", n)
		}
		return int64(n), nil
	case float64:
		if n == float64(int64(n)) {
			return int64(n), nil
		}
	case string:
		if i, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64); err == nil {
			return i, nil
		}
	}
	return 0, l.errorf(key, nil, "%s is not an integer", formatValue(v))
}

// maxRingbufSize is the largest power of two a BPF map's u32 max_entries holds.
const maxRingbufSize = 1 << 31

func (l *loader) ringbufSize() (int, error) {
	const key = KeyEBPFRingbufSize
	n, err := l.integer(key, l.v.Get(key))
	if err != nil {
		return 0, err
	}
	page := int64(os.Getpagesize())
	switch {
	case n < page:
		return 0, l.errorf(key, nil, "%d is smaller than the page size (%d bytes)", n, page)
	case n&(n-1) != 0:
		return 0, l.errorf(key, nil, "%d is not a power of two", n)
	case n%page != 0:
		return 0, l.errorf(key, nil, "%d is not a multiple of the page size (%d bytes)", n, page)
	case n > maxRingbufSize:
		return 0, l.errorf(key, nil, "%d is larger than %d", n, maxRingbufSize)
	}
	return int(n), nil
}

func (l *loader) ports(key string) ([]uint16, error) {
	items, err := l.list(key)
	if err != nil {
		return nil, err
	}
	out := []uint16{}
	for _, it := range items {
		n, err := l.integer(key, it)
		if err != nil {
			return nil, l.errorf(key, nil, "%s is not a port number", formatValue(it))
		}
		if n < 1 || n > 65535 {
			return nil, l.errorf(key, nil, "%d is out of range 1..65535", n)
		}
		if !slices.Contains(out, uint16(n)) {
			out = append(out, uint16(n))
		}
	}
	return out, nil
}

func (l *loader) cidrs(key string) ([]netip.Prefix, error) {
	items, err := l.list(key)
	if err != nil {
		return nil, err
	}
	out := []netip.Prefix{}
	for _, it := range items {
		s, ok := it.(string)
		if !ok {
			return nil, l.errorf(key, nil, "%s is not a CIDR prefix (e.g. 10.0.0.0/8, 2001:db8::/32)", formatValue(it))
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, l.errorf(key, nil, "%q is not a CIDR prefix (e.g. 10.0.0.0/8, 2001:db8::/32)", s)
		}
		p = p.Masked()
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// members reads a list of tcp_info member names, in the order given and
// without duplicates.
func (l *loader) members(key string) ([]flow.Field, error) {
	items, err := l.list(key)
	if err != nil {
		return nil, err
	}
	out := []flow.Field{}
	for _, it := range items {
		name, ok := it.(string)
		if !ok {
			return nil, l.errorf(key, nil, "%s is not a tcp_info member name", formatValue(it))
		}
		f, ok := flow.FieldByName(name)
		if !ok {
			return nil, l.errorf(key, nil, "%q is not a tcp_info member%s", name, suggestMembers(name))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out, nil
}

// suggestMembers names the members whose names contain s (cwnd: snd_cwnd),
// or points to the list when none or too many do.
func suggestMembers(s string) string {
	var near []string
	for f := range flow.NumFields {
		if s != "" && strings.Contains(f.Name(), strings.ToLower(s)) {
			near = append(near, f.Name())
		}
	}
	if len(near) == 0 || len(near) > 4 {
		return " (the members are listed in the README, under tcp_info)"
	}
	return " (did you mean " + strings.Join(near, ", ") + "?)"
}

func (l *loader) listen(key string) (string, error) {
	s, err := l.str(key)
	if err != nil || s == "" {
		return s, err
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", l.errorf(key, nil, "%q is not host:port (e.g. :9100, 127.0.0.1:9100)", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", l.errorf(key, nil, "%q has no valid port number", s)
	}
	return s, nil
}

func (l *loader) cgroup(key string) (string, error) {
	s, err := l.str(key)
	if err != nil {
		return "", err
	}
	dir, err := cgroup.Resolve(s)
	if err != nil {
		if s == "" {
			return "", l.errorf(key, err, "%q (the cgroup2 root) is not usable", s)
		}
		return "", l.errorf(key, err, "%q is not usable", s)
	}
	return dir, nil
}

func (l *loader) output(key string) (string, error) {
	s, err := l.str(key)
	if err != nil {
		return "", err
	}
	if s == "" {
		return "", l.errorf(key, nil, `"" is not a path (use "-" for standard output)`)
	}
	if s == Stdout {
		return s, nil
	}
	if err := checkWritable(s); err != nil {
		return "", l.errorf(key, err, "%q is not writable", s)
	}
	return s, nil
}

// checkWritable opens path for append as flowd will. A file that does not
// exist yet is created and removed again, so that checking has no effect.
// Existing files that are not regular files (a FIFO, a device) are checked
// with access(2), since opening them may block.
func checkWritable(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.IsDir():
		return fmt.Errorf("%s is a directory", path)
	case err == nil && !fi.Mode().IsRegular():
		if err := unix.Access(path, unix.W_OK); err != nil {
			return fmt.Errorf("access %s: %w", path, err)
		}
		return nil
	case err == nil:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		return f.Close()
	case errors.Is(err, fs.ErrNotExist):
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Remove(path)
	default:
		return err
	}
}

// formatValue renders a value from YAML or the environment for an error.
func formatValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(v)
	case []any:
		parts := make([]string, len(v))
		for i := range v {
			parts[i] = formatValue(v[i])
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		parts := make([]string, 0, len(v))
		for _, k := range sortedKeys(v) {
			parts = append(parts, k+": "+formatValue(v[k]))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	default:
		return fmt.Sprint(v)
	}
}

// EBPFConfig returns the configuration of the ebpf backend.
func (c *Config) EBPFConfig(log logrus.FieldLogger) ebpf.Config {
	return ebpf.Config{
		Cgroup:        c.Cgroup,
		Mode:          c.EBPF.Mode,
		Interval:      c.EBPF.Interval,
		RingbufSize:   c.EBPF.RingbufSize,
		FlushInterval: c.EBPF.FlushInterval,
		Filter:        c.BackendFilter(),
		Members:       c.Output.TCPInfo,
		Log:           log,
	}
}

// NetlinkConfig returns the configuration of the netlink backend.
func (c *Config) NetlinkConfig(log logrus.FieldLogger) netlink.Config {
	return netlink.Config{
		Cgroup:   c.Cgroup,
		Interval: c.Netlink.Interval,
		Netns:    c.Netlink.Netns,
		Filter:   c.BackendFilter(),
		Log:      log,
	}
}

// BackendFilter returns the flow filter. Its slices are copies, so a
// backend may keep them.
func (c *Config) BackendFilter() backends.Filter {
	return backends.Filter{
		LocalPorts:  slices.Clone(c.Filter.LocalPorts),
		RemotePorts: slices.Clone(c.Filter.RemotePorts),
		RemoteCIDRs: slices.Clone(c.Filter.RemoteCIDRs),
	}
}

// yamlConfig is the printed form of Config: the shape of the config file.
type yamlConfig struct {
	Backends []string `yaml:"backends,flow"`
	Cgroup   string   `yaml:"cgroup"`
	EBPF     struct {
		Mode          string `yaml:"mode"`
		Interval      string `yaml:"interval"`
		RingbufSize   int    `yaml:"ringbuf_size"`
		FlushInterval string `yaml:"flush_interval"`
	} `yaml:"ebpf"`
	Netlink struct {
		Interval string `yaml:"interval"`
		Netns    string `yaml:"netns"`
	} `yaml:"netlink"`
	Filter struct {
		LocalPorts  []uint16 `yaml:"local_ports,flow"`
		RemotePorts []uint16 `yaml:"remote_ports,flow"`
		RemoteCIDRs []string `yaml:"remote_cidrs,flow"`
	} `yaml:"filter"`
	Output struct {
		Path    string   `yaml:"path"`
		TCPInfo []string `yaml:"tcp_info,flow"`
		Samples string   `yaml:"samples"`
	} `yaml:"output"`
	Log struct {
		Level  string `yaml:"level"`
		Format string `yaml:"format"`
	} `yaml:"log"`
	Metrics struct {
		Listen string `yaml:"listen"`
	} `yaml:"metrics"`
}

// YAML returns the configuration as a config file that sets every key.
// Loading it gives the same Config.
func (c *Config) YAML() ([]byte, error) {
	var y yamlConfig
	y.Backends = c.Backends
	y.Cgroup = c.Cgroup
	y.EBPF.Mode = string(c.EBPF.Mode)
	y.EBPF.Interval = c.EBPF.Interval.String()
	y.EBPF.RingbufSize = c.EBPF.RingbufSize
	y.EBPF.FlushInterval = c.EBPF.FlushInterval.String()
	y.Netlink.Interval = c.Netlink.Interval.String()
	y.Netlink.Netns = c.Netlink.Netns
	y.Filter.LocalPorts = nonNil(c.Filter.LocalPorts)
	y.Filter.RemotePorts = nonNil(c.Filter.RemotePorts)
	y.Filter.RemoteCIDRs = []string{}
	for _, p := range c.Filter.RemoteCIDRs {
		y.Filter.RemoteCIDRs = append(y.Filter.RemoteCIDRs, p.String())
	}
	y.Output.Path = c.Output.Path
	y.Output.TCPInfo = []string{}
	for _, f := range c.Output.TCPInfo {
		y.Output.TCPInfo = append(y.Output.TCPInfo, f.Name())
	}
	y.Output.Samples = c.Output.Samples.String()
	y.Log.Level = c.Log.Level
	y.Log.Format = c.Log.Format
	y.Metrics.Listen = c.Metrics.Listen
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&y); err != nil {
		return nil, fmt.Errorf("encoding config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encoding config: %w", err)
	}
	return b.Bytes(), nil
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
