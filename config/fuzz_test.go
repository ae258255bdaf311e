package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzLoad loads any config file with any FLOWD_* variables. Load never
// panics; every error it returns is a *Error that matches ErrInvalid (exit
// status 2, one line); and a configuration it accepts prints (YAML) as a
// file that loads back to the same configuration, as `flowd config` needs.
// `go test` runs the seeds below; `go test -fuzz=FuzzLoad ./config`
// explores from them.
//
// env is lines of NAME=VALUE; each NAME is set with the FLOWD_ prefix, so
// that the rest of the environment stays as it is.
func FuzzLoad(f *testing.F) {
	shipped, err := os.ReadFile("../configs/flowd.yaml")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []struct{ file, env string }{
		{string(shipped), ""},
		{"", ""},
		{"backends: [ebpf, netlink]\nebpf:\n  mode: transition\n  interval: 0s\n", "NETLINK_INTERVAL=2s"},
		{"filter:\n  local_ports: [5201, \"80\"]\n  remote_cidrs: [10.1.2.3/8, \"2001:db8::1/32\"]\n", "FILTER_REMOTE_PORTS=443,8443"},
		{"output:\n  path: /var/log/flowd/records.jsonl\n  mode: \"0640\"\n  follow_symlinks: true\n  tcp_info: [snd_cwnd, rtt]\n", "OUTPUT_SAMPLES=full"},
		{"output:\n  mode: 0640\n", ""},
		{"ebpf:\n  flush_interval: 1ns\n  ringbuf_size: 4MiB\n", "EBPF_MODE=fast"},
		{"ebpf: fast\n", ""},
		{"- a\n- b\n", ""},
		{"backends: [ebpf\n", ""},
		{"a: &a [*a]\n", ""},
		{"metrics:\n  listen: \":9100\"\nlog:\n  level: debug\n  format: json\n", "LOG_LEVEL=trace"},
		{"cgroup: [a, b]\nnetlink:\n  netns: /run/netns/blue\n", "BOGUS=1"},
		{"filter:\n  local_ports: 80\n", "OUTPUT_TCP_INFO=rtt,cwnd"},
		{"ebpf:\n  interval: 5\n  ringbuf_size: 4096.5\n", "EBPF_RINGBUF_SIZE=99999999999999999999"},
	} {
		f.Add([]byte(seed.file), seed.env)
	}
	f.Fuzz(func(t *testing.T, file []byte, env string) {
		for _, line := range strings.Split(env, "\n") {
			name, val, ok := strings.Cut(line, "=")
			if !ok || name == "" || strings.ContainsAny(name, "=\x00") || strings.ContainsRune(val, 0) {
				continue
			}
			t.Setenv(EnvPrefix+"_"+name, val)
		}
		path := filepath.Join(t.TempDir(), "flowd.yaml")
		if err := os.WriteFile(path, file, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(path)
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load error %q (%T) is not a *config.Error matching ErrInvalid", err, err)
			}
			return
		}
		printed, err := c.YAML()
		if err != nil {
			t.Fatalf("printing an accepted configuration: %v", err)
		}
		if err := os.WriteFile(path, printed, 0o600); err != nil {
			t.Fatal(err)
		}
		again, err := Load(path)
		if err != nil {
			t.Fatalf("the printed configuration does not load: %v\n%s", err, printed)
		}
		if !reflect.DeepEqual(again, c) {
			t.Fatalf("the printed configuration loads as\n%+v\nnot\n%+v\n%s", again, c, printed)
		}
	})
}
