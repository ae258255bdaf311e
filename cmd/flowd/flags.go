package main

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/flowd/flowd/config"
)

// keyFlags are the flags that set configuration keys, on the commands that
// read the configuration (run, config). A flag overrides the file and the
// environment; config.Load converts and checks its text as it does a
// variable's, and its errors name the flag. A list flag may be repeated,
// or given comma-separated values.
var keyFlags = []struct {
	name, short string
	typ         string   // what the help says it takes
	keys        []string // the keys it sets
	list        bool
	usage       string
}{
	{"cgroup", "", "path", []string{"cgroup"}, false,
		"cgroup v2 directory whose sockets are recorded: relative to the cgroup2 mount (system.slice/nginx.service) or absolute"},
	{"backend", "b", "names", []string{"backends"}, true,
		"backends: auto, ebpf, netlink, or ebpf,netlink side by side"},
	{"interval", "i", "duration", []string{"ebpf.interval", "netlink.interval"}, false,
		"time between two samples of a flow, for both backends (ebpf.interval and netlink.interval), e.g. 500ms"},
	{"port", "p", "ports", []string{"filter.local_ports", "filter.remote_ports"}, true,
		"record only the flows with one of these ports at either end (filter.local_ports and filter.remote_ports)"},
	{"output", "o", "path", []string{"output.path"}, false,
		"where records go: a file (appended to), or - for standard output"},
	{"tcp-info", "", "members", []string{"output.tcp_info"}, true,
		"the tcp_info members records hold, e.g. rtt,snd_cwnd,bytes_acked (default: every member)"},
	{"events", "", "events", []string{"output.events"}, true,
		"the records written: open, sample, state, close (default: all)"},
	{"log-level", "", "level", []string{"log.level"}, false,
		"flowd's own log: trace, debug, info, warn or error"},
}

// configFlags are the flags of a command that reads the configuration.
type configFlags struct {
	path string // --config
}

// addConfigFlags registers --config and the keyFlags on cmd.
func addConfigFlags(cmd *cobra.Command) *configFlags {
	c := &configFlags{}
	f := cmd.Flags()
	f.StringVarP(&c.path, "config", "c", "", "YAML config `file` (default: none; the built-in defaults and FLOWD_* variables)")
	for _, kf := range keyFlags {
		f.VarP(&keyValue{typ: kf.typ, list: kf.list}, kf.name, kf.short, kf.usage)
	}
	return c
}

// load reads and validates the configuration: the defaults, the file, the
// environment and the flags, each above the one before.
func (c *configFlags) load(cmd *cobra.Command) (*config.Config, error) {
	if cmd.Flags().Changed("config") && c.path == "" {
		return nil, errors.New("--config: empty file name (leave the flag out to use the defaults and FLOWD_* variables alone)")
	}
	var opts []config.Option
	for _, kf := range keyFlags {
		for _, key := range kf.keys {
			opts = append(opts, config.WithFlag(key, cmd.Flags().Lookup(kf.name)))
		}
	}
	return config.Load(c.path, opts...)
}

// keyValue holds the text a flag gives its keys.
type keyValue struct {
	text, typ string
	list, set bool
}

func (v *keyValue) Set(s string) error {
	if v.list && v.set && v.text != "" && s != "" {
		s = v.text + "," + s
	}
	v.text, v.set = s, true
	return nil
}

func (v *keyValue) String() string { return v.text }
func (v *keyValue) Type() string   { return v.typ }
