package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix is the prefix of the environment variables that set keys.
const EnvPrefix = "FLOWD"

// EnvVar returns the environment variable that sets key, e.g.
// FLOWD_EBPF_RINGBUF_SIZE for ebpf.ringbuf_size.
func EnvVar(key string) string {
	return EnvPrefix + "_" + strings.ToUpper(envReplacer.Replace(key))
}

var envReplacer = strings.NewReplacer(".", "_", "-", "_")

// Keys returns every config key, in the order flowd prints them.
func Keys() []string {
	var keys []string
	eachKey(reflect.ValueOf(Config{}), "", func(key string, _ reflect.Value) { keys = append(keys, key) })
	return keys
}

// eachKey calls fn with every key of struct v, in field order, and its field.
func eachKey(v reflect.Value, prefix string, fn func(key string, field reflect.Value)) {
	for i := range v.NumField() {
		if name := keyName(v.Type().Field(i)); name == "" {
			continue
		} else if f := v.Field(i); isSection(f.Type()) {
			eachKey(f, prefix+name+".", fn)
		} else {
			fn(prefix+name, f)
		}
	}
}

// keyName is the key a struct field holds: its yaml tag's name, or "".
func keyName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return name
}

// isSection reports whether a field of type t holds keys rather than a
// value: a struct not read from text (netip.Prefix is a value).
func isSection(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(textUnmarshaler)
}

var textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()

// Option changes how Load reads the configuration.
type Option func(*loader)

// WithFlag makes a command-line flag set key when it was given. A nil flag
// is ignored.
func WithFlag(key string, f *pflag.Flag) Option {
	return func(l *loader) {
		if f != nil {
			l.flags[key] = f
		}
	}
}

type loader struct{ flags map[string]*pflag.Flag }

// Load returns Default, overridden by the YAML file at path (none when path
// is ""), then by FLOWD_* environment variables, then by the flags given
// with WithFlag, validated. Errors about the configuration match ErrInvalid.
func Load(path string, opts ...Option) (*Config, error) {
	l := loader{flags: map[string]*pflag.Flag{}}
	for _, o := range opts {
		o(&l)
	}
	v := viper.New()
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(envReplacer)
	v.AllowEmptyEnv(true)
	v.AutomaticEnv()
	eachKey(reflect.ValueOf(Default()).Elem(), "", func(key string, f reflect.Value) { v.SetDefault(key, f.Interface()) })
	if path != "" {
		m, err := readFile(path)
		if err != nil {
			return nil, err
		}
		if err := v.MergeConfigMap(m); err != nil {
			return nil, &Error{Msg: "reading config file " + path, Err: err}
		}
	}
	if err := checkEnv(os.Environ()); err != nil {
		return nil, err
	}
	for key, f := range l.flags {
		if err := v.BindPFlag(key, f); err != nil {
			return nil, fmt.Errorf("binding flag --%s: %w", f.Name, err)
		}
	}

	c := &Config{}
	for _, key := range Keys() {
		if src := l.source(key); src != "" {
			if c.setBy == nil {
				c.setBy = map[string]string{}
			}
			c.setBy[key] = src
		}
	}
	err := v.UnmarshalExact(c, func(dc *mapstructure.DecoderConfig) {
		dc.TagName = "yaml"
		dc.WeaklyTypedInput = false // decode converts, and says what it cannot
		dc.DecodeHook = mapstructure.DecodeHookFuncValue(decode)
	})
	var de *mapstructure.DecodeError
	if errors.As(err, &de) {
		// The key of "filter.local_ports[1]" is the list's.
		return nil, c.Invalid(listIndex.ReplaceAllString(de.Name(), ""), nil, "%s", de.Unwrap())
	} else if err != nil {
		return nil, &Error{Msg: "decoding the configuration", Err: err}
	}
	// Repeating an item of these lists changes nothing.
	c.Filter.LocalPorts = unique(c.Filter.LocalPorts)
	c.Filter.RemotePorts = unique(c.Filter.RemotePorts)
	c.Filter.RemoteCIDRs = unique(c.Filter.RemoteCIDRs)
	c.Output.TCPInfo = unique(c.Output.TCPInfo)
	c.Output.Events = unique(c.Output.Events)
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

var listIndex = regexp.MustCompile(`\[[0-9]+\]`)

// unique returns s without repeated items, in order.
func unique[T comparable](s []T) []T {
	out := s[:0:0]
	for _, v := range s {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// source names the flag or environment variable that set key; "" for the
// config file and the defaults.
func (l *loader) source(key string) string {
	if f, ok := l.flags[key]; ok && f.Changed {
		return "--" + f.Name
	}
	if _, ok := os.LookupEnv(EnvVar(key)); ok {
		return EnvVar(key)
	}
	return ""
}

// maxFileSize is the largest config file Load reads. flowd's whole
// configuration is a few KiB; a larger file is not one (a device, a log
// given by mistake), and is refused before it is read.
const maxFileSize = 1 << 20

// readFile reads the YAML file at path into the nested map viper merges.
// The file is a regular file, or a pipe (--config <(...)); either way no
// more than maxFileSize is read.
func readFile(path string) (map[string]any, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, &Error{Msg: "reading config file", Err: err}
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, &Error{Msg: "parsing config file " + path, Err: err}
	}
	m, ok := doc.(map[string]any)
	if doc == nil {
		m, ok = map[string]any{}, true
	}
	if !ok {
		return nil, &Error{Msg: fmt.Sprintf("config file %s does not hold a mapping of keys", path)}
	}
	return m, checkFile(m, reflect.TypeFor[Config](), "")
}

// readLimited reads the file at path if it is a regular file or a pipe of
// at most maxFileSize bytes. A device, directory or socket is refused
// before it is opened: reading /dev/zero would never end.
func readLimited(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := checkKind(path, st); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil { // what was opened, if the path changed meanwhile
		return nil, err
	}
	if err := checkKind(path, st); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s holds more than 1 MiB, the limit of a config file", path)
	}
	return data, nil
}

// checkKind accepts a regular file of at most maxFileSize bytes, or a pipe.
func checkKind(path string, st os.FileInfo) error {
	switch m := st.Mode(); {
	case m.IsRegular():
		if st.Size() > maxFileSize {
			return fmt.Errorf("%s holds %d bytes, more than 1 MiB, the limit of a config file", path, st.Size())
		}
		return nil
	case m&os.ModeNamedPipe != 0:
		return nil
	case m.IsDir():
		return fmt.Errorf("%s is a directory", path)
	default:
		return fmt.Errorf("%s is %s, not a regular file", path, kind(m))
	}
}

// kind names the type of a file that is not a regular file, directory or pipe.
func kind(m os.FileMode) string {
	switch {
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}

// checkFile rejects the keys of m that struct type t has no field for and
// drops those without a value, which keep their defaults. Viper would take
// "Backends" for backends and "ebpf.mode" for a path, and a section without
// keys ("ebpf:") would hide the environment's values for its keys.
func checkFile(m map[string]any, t reflect.Type, prefix string) error {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		if name := keyName(t.Field(i)); name != "" {
			fields[name] = t.Field(i).Type
		}
	}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		ft, ok := fields[k]
		if !ok {
			leaf := strings.ToLower(k)
			near := nearKeys(prefix+k, leaf, append(sections(), Keys()...), func(key string) string { return key })
			return &Error{Key: prefix + k, Msg: "unknown key" + DidYouMean(near)}
		}
		switch sub := m[k].(type) {
		case nil:
			delete(m, k)
		case map[string]any:
			if isSection(ft) {
				if err := checkFile(sub, ft, prefix+k+"."); err != nil {
					return err
				}
			} else if err := checkMapKeys(sub, prefix+k); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkMapKeys rejects a mapping value whose keys differ in case only:
// viper lower-cases them, and one would silently replace the other.
func checkMapKeys(m map[string]any, key string) error {
	seen := map[string]string{}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if other, ok := seen[strings.ToLower(k)]; ok {
			return &Error{Key: key, Msg: fmt.Sprintf("%q and %q are the same name (names are not case-sensitive)", other, k)}
		}
		seen[strings.ToLower(k)] = k
	}
	return nil
}

// checkEnv rejects FLOWD_* variables that set no key: a typo there would
// otherwise go unnoticed.
func checkEnv(environ []string) error {
	keys := Keys()
	for _, kv := range environ {
		name, val, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, EnvPrefix+"_") && !slices.ContainsFunc(keys, func(k string) bool { return EnvVar(k) == name }) {
			near := nearKeys(name, strings.ToLower(strings.TrimPrefix(name, EnvPrefix+"_")), keys, EnvVar)
			return &Error{Msg: fmt.Sprintf("environment variable %s=%q sets no config key%s", name, val, DidYouMean(near))}
		}
	}
	return nil
}

// YAML returns the configuration as a config file that sets every key;
// loading it gives the same Config.
func (c *Config) YAML() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := errors.Join(enc.Encode(c), enc.Close()); err != nil {
		return nil, fmt.Errorf("encoding config: %w", err)
	}
	return b.Bytes(), nil
}
