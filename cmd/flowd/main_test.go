package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/sink"
)

const testVersion = "v9.9.9-test"

// flowdBin is the flowd binary TestMain builds.
var flowdBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "flowd-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Readable by everyone: one test runs the binary as nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	flowdBin = filepath.Join(dir, "flowd")
	build := exec.Command("go", "build", "-ldflags", "-X main.version="+testVersion, "-o", flowdBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building flowd: %v\n", err)
		return 1
	}
	return m.Run()
}

// env is the test's environment without FLOWD_* variables, plus extra.
func env(extra ...string) []string {
	var e []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, config.EnvPrefix+"_") {
			e = append(e, kv)
		}
	}
	return append(e, extra...)
}

type result struct {
	code           int
	stdout, stderr string
}

// flowd runs the binary to completion.
func flowd(t *testing.T, environ []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, flowdBin, args...)
	cmd.Env = environ
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running flowd %v: %v", args, err)
	}
	return result{cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()}
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flowd.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func requireCgroup2(t *testing.T) string {
	t.Helper()
	root, err := cgroup.Mount()
	if err != nil {
		t.Skipf("skipping: needs a mounted cgroup2 file system: %v", err)
	}
	return root
}

// TestUsageErrors: every configuration or usage error exits with status 2
// and one line on stderr that names the key and the value.
func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		file string   // config file content; "" = no --config
		env  []string // extra environment
		args []string // extra arguments
		want []string // in stderr
		// The check is of the machine, when flowd run starts: flowd config
		// prints the value, and has no side effects.
		start bool
		root  bool // the default cgroup must resolve (checked before the key)
	}{
		{name: "unknown key", file: "ebpf:\n  mood: poll\n", want: []string{"ebpf.mood", "unknown key"}},
		{name: "bad duration", file: "netlink:\n  interval: 1x\n", want: []string{"netlink.interval", `"1x"`}},
		{name: "unknown mode", file: "ebpf:\n  mode: fast\n", want: []string{"ebpf.mode", `"fast"`}},
		{name: "unknown backend", file: "backends: [ebpf, pcap]\n", want: []string{"backends", `"pcap"`}},
		{name: "auto combined", file: "backends: [auto, ebpf]\n", want: []string{"backends", `"auto"`}},
		{name: "nonexistent cgroup", file: "cgroup: /nonexistent/flowd\n", want: []string{"cgroup", `"/nonexistent/flowd"`}, start: true},
		{name: "non-cgroup2 cgroup", file: "cgroup: " + dir + "\n", want: []string{"cgroup", `"` + dir + `"`, "cgroup2"}, start: true},
		{name: "cgroup env", env: []string{"FLOWD_CGROUP=/proc"}, want: []string{"cgroup", `"/proc"`, "FLOWD_CGROUP"}, start: true},
		{name: "bad CIDR", file: "filter:\n  remote_cidrs: [10.0.0.0/40]\n", want: []string{"filter.remote_cidrs", `"10.0.0.0/40"`}},
		{name: "port out of range", file: "filter:\n  local_ports: [99999]\n", want: []string{"filter.local_ports", "99999"}},
		{name: "unwritable output", file: "output:\n  path: " + dir + "/no/such/dir/out.jsonl\n", want: []string{"output.path", dir + "/no/such/dir/out.jsonl"}, start: true, root: true},
		{name: "netns not a namespace", file: "netlink:\n  netns: /etc/hostname\n", want: []string{"netlink.netns", `"/etc/hostname"`}, start: true, root: true},
		{name: "ringbuf size", file: "ebpf:\n  ringbuf_size: 5000\n", want: []string{"ebpf.ringbuf_size", "5000"}},
		{name: "bad listen", file: "metrics:\n  listen: nine-one-hundred\n", want: []string{"metrics.listen", `"nine-one-hundred"`}},
		{name: "listen not an IP", file: "metrics:\n  listen: 300.1.1.1:9977\n", want: []string{"metrics.listen", `"300.1.1.1" is not an IP address`}},
		{name: "listen not on this host", file: "metrics:\n  listen: 192.0.2.1:9977\n", want: []string{"metrics.listen", "192.0.2.1:9977", "cannot be bound on this host"}, start: true, root: true},
		{name: "metrics limit", file: "metrics:\n  max_cgroups: 0\n", want: []string{"metrics.max_cgroups", "0 is out of range"}},
		{name: "bad env", env: []string{"FLOWD_EBPF_MODE=fast"}, want: []string{"ebpf.mode", `"fast"`, "FLOWD_EBPF_MODE"}},
		{name: "OTLP endpoint a URL", file: "output:\n  otlp:\n    endpoint: http://collector:4318\n", want: []string{"output.otlp.endpoint", `"http://collector:4318"`}},
		{name: "OTLP protocol", env: []string{"FLOWD_OUTPUT_OTLP_PROTOCOL=http/json"}, want: []string{"output.otlp.protocol", `"http/json"`, "FLOWD_OUTPUT_OTLP_PROTOCOL"}},
		{name: "no output", file: "output:\n  path: none\n", want: []string{"output.path", `"none"`, "output.otlp.endpoint"}},
		{name: "OTLP CA file missing", file: "output:\n  otlp:\n    endpoint: 127.0.0.1:4317\n    tls: {enabled: true, ca_file: " + dir + "/ca.pem}\n",
			want: []string{"output.otlp.tls.ca_file", dir + "/ca.pem"}, start: true, root: true},
		{name: "bad log level flag", args: []string{"--log-level", "loud"}, want: []string{"log.level", `"loud"`, "--log-level"}},
		{name: "missing config file", args: []string{"--config", dir + "/missing.yaml"}, want: []string{dir + "/missing.yaml"}},
		{name: "unknown flag", args: []string{"--bogus"}, want: []string{"unknown flag: --bogus"}},
		{name: "extra argument", args: []string{"now"}, want: []string{`"now"`}},
	}
	for _, tt := range tests {
		for _, sub := range []string{"run", "config"} {
			t.Run(tt.name+"/"+sub, func(t *testing.T) {
				if tt.root {
					requireCgroup2(t)
				}
				args := []string{sub}
				if tt.file != "" {
					args = append(args, "--config", writeConfig(t, tt.file))
				}
				args = append(args, tt.args...)
				r := flowd(t, env(tt.env...), args...)
				if tt.start && sub == "config" {
					if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, tt.want[1]) && !strings.Contains(r.stdout, strings.Trim(tt.want[1], `"`)) {
						t.Errorf("flowd %v: exit status %d, stderr %q; want 0, nothing, and the value printed:\n%s", args, r.code, r.stderr, r.stdout)
					}
					return
				}
				if r.code != 2 {
					t.Errorf("flowd %v: exit status %d, want 2; stderr:\n%s", args, r.code, r.stderr)
				}
				if lines := strings.Count(r.stderr, "\n"); lines != 1 || !strings.HasPrefix(r.stderr, "flowd: ") {
					t.Errorf("flowd %v: stderr is not one line starting with \"flowd: \":\n%s", args, r.stderr)
				}
				for _, w := range tt.want {
					if !strings.Contains(r.stderr, w) {
						t.Errorf("flowd %v: stderr %q does not mention %q", args, r.stderr, w)
					}
				}
				if r.stdout != "" {
					t.Errorf("flowd %v wrote to stdout: %q", args, r.stdout)
				}
			})
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	r := flowd(t, env(), "rnu")
	if r.code != 2 || r.stderr != "flowd: unknown command \"rnu\" (did you mean run?)\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = flowd(t, env())
	if r.code != 2 || !strings.Contains(r.stderr, "missing command") || !strings.Contains(r.stderr, "Usage:") {
		t.Errorf("no command: exit %d, stderr %q", r.code, r.stderr)
	}
	r = flowd(t, env(), "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "run") || !strings.Contains(r.stdout, "--version") {
		t.Errorf("--help: exit %d, stdout %q", r.code, r.stdout)
	}
	r = flowd(t, env(), "run", "--help")
	for _, flag := range []string{"--config", "--cgroup", "--backend", "--interval", "--port", "--output", "--tcp-info", "--events", "--log-level"} {
		if r.code != 0 || !strings.Contains(r.stdout, flag) {
			t.Errorf("run --help: exit %d, no %s in\n%s", r.code, flag, r.stdout)
		}
	}
}

// TestDidYouMean: a mistyped command, flag, key or variable is an error
// (exit status 2, one line) that names what was probably meant; a flag of
// another command names the commands that take it.
func TestDidYouMean(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{args: []string{"runn"}, want: `unknown command "runn" (did you mean run?)`},
		{args: []string{"flow", "x.jsonl"}, want: `unknown command "flow" (did you mean flows?)`},
		{args: []string{"confg"}, want: `unknown command "confg" (did you mean config?)`},
		{args: []string{"frobnicate"}, want: `unknown command "frobnicate"`},
		{args: []string{"run", "--cgrup", "x"}, want: "unknown flag: --cgrup (did you mean --cgroup?)"},
		{args: []string{"config", "--intervall", "1s"}, want: "unknown flag: --intervall (did you mean --interval?)"},
		{args: []string{"version", "--config", "x"}, want: "unknown flag: --config: flowd version does not take it (flowd config and flowd run do)"},
		{args: []string{"fill", "--config", "x"}, want: "unknown flag: --config: flowd fill does not take it (flowd config and flowd run do)"},
		{args: []string{"flows", "--strict"}, want: "unknown flag: --strict: flowd flows does not take it (flowd fill do)"},
		{args: []string{"config", "--config", writeConfig(t, "ebpf:\n  moed: poll\n")}, want: "ebpf.moed: unknown key (did you mean ebpf.mode?)"},
		{env: []string{"FLOWD_EBPF_MOED=poll"}, args: []string{"config"}, want: `environment variable FLOWD_EBPF_MOED="poll" sets no config key (did you mean FLOWD_EBPF_MODE?)`},
	} {
		r := flowd(t, env(tc.env...), tc.args...)
		if r.code != 2 || r.stderr != "flowd: "+tc.want+"\n" || r.stdout != "" {
			t.Errorf("flowd %v: exit %d, stderr %q, stdout %q; want 2 and %q", tc.args, r.code, r.stderr, r.stdout, tc.want)
		}
	}
}

// TestKeyFlags: the flags of run and config set their keys, above the
// environment, above the file; their errors name the flag.
func TestKeyFlags(t *testing.T) {
	file := writeConfig(t, "cgroup: from-file\nnetlink:\n  interval: 3s\nfilter:\n  local_ports: [22]\noutput:\n  path: file.jsonl\n")
	r := flowd(t, env("FLOWD_NETLINK_INTERVAL=2s", "FLOWD_OUTPUT_PATH=env.jsonl", "FLOWD_BACKENDS=netlink"), "config", "-c", file,
		"--cgroup", "system.slice/nginx.service", "--backend", "ebpf", "-b", "netlink", "--interval", "250ms",
		"--port", "80,443", "-p", "8080", "-o", "flag.jsonl", "--tcp-info", "rtt", "--tcp-info", "snd_cwnd",
		"--events", "open,close", "--log-level", "debug")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{
		"backends: [ebpf, netlink]\n", "cgroup: system.slice/nginx.service\n",
		"ebpf:\n  mode: poll\n  interval: 250ms\n", "netlink:\n  interval: 250ms\n",
		"local_ports: [80, 443, 8080]\n", "remote_ports: [80, 443, 8080]\n", "path: flag.jsonl\n",
		"tcp_info: [rtt, snd_cwnd]\n", "events: [open, close]\n", "level: debug\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("flags: config lacks %q:\n%s", want, r.stdout)
		}
	}
	// Without the flags: the environment above the file, the file above
	// the defaults.
	r = flowd(t, env("FLOWD_NETLINK_INTERVAL=2s", "FLOWD_OUTPUT_PATH=env.jsonl"), "config", "-c", file)
	for _, want := range []string{"cgroup: from-file\n", "netlink:\n  interval: 2s\n", "local_ports: [22]\n", "path: env.jsonl\n", "ebpf:\n  mode: poll\n  interval: 1s\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("no flags: config lacks %q:\n%s", want, r.stdout)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--interval", "1x"}, `ebpf.interval: "1x" is not a duration (use a unit, e.g. 500ms, 2s) (set by --interval)`},
		{[]string{"-i", "0s"}, "netlink.interval: 0s is shorter than 10ms (set by --interval)"},
		{[]string{"--port", "80", "--port", "70000"}, "filter.local_ports: 70000 is out of range 1..65535 (set by --port)"},
		{[]string{"--backend", "pcap"}, `backends: "pcap" is not one of auto, ebpf, netlink (set by --backend)`},
		{[]string{"-o", ""}, `output.path: "" is not a path (use "-" for standard output) (set by --output)`},
		{[]string{"--events", "opne"}, `output.events: "opne" is not one of open, sample, state, close (set by --events)`},
		{[]string{"--config="}, "--config: empty file name (leave the flag out to use the defaults and FLOWD_* variables alone)"},
	} {
		for _, cmd := range []string{"config", "run"} {
			r := flowd(t, env(), append([]string{cmd}, tc.args...)...)
			if r.code != 2 || r.stderr != "flowd: "+tc.want+"\n" || r.stdout != "" {
				t.Errorf("flowd %s %v: exit %d, stderr %q; want 2 and %q", cmd, tc.args, r.code, r.stderr, tc.want)
			}
		}
	}
}

// TestRelativeCgroup: a relative cgroup is relative to the cgroup2 mount,
// whatever the working directory.
func TestRelativeCgroup(t *testing.T) {
	mount := requireCgroup2(t)
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "system.slice"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(flowdBin, "run", "--cgroup", "system.slice/flowd-no-such.service")
	cmd.Dir, cmd.Env = dir, env()
	out, err := cmd.CombinedOutput()
	want := fmt.Sprintf("flowd: cgroup: %q is not usable (set by --cgroup): %s does not exist\n",
		"system.slice/flowd-no-such.service", filepath.Join(mount, "system.slice/flowd-no-such.service"))
	if cmd.ProcessState.ExitCode() != 2 || string(out) != want {
		t.Errorf("exit %d (%v), output %q; want 2 and %q", cmd.ProcessState.ExitCode(), err, out, want)
	}
}

func TestConfigCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "records.jsonl")
	path := writeConfig(t, `
backends: [ebpf, netlink]
ebpf:
  mode: transition
  interval: 250ms
filter:
  local_ports: [5201]
  remote_cidrs: [10.1.0.0/16]
output:
  path: `+out+`
metrics:
  listen: "127.0.0.1:9100"
`)
	r := flowd(t, env("FLOWD_NETLINK_INTERVAL=3s"), "config", "--config", path, "--log-level", "debug")
	if r.code != 0 {
		t.Fatalf("exit status %d; stderr:\n%s", r.code, r.stderr)
	}
	for _, want := range []string{
		"backends: [ebpf, netlink]\n", "cgroup: \"\"\n", "mode: transition\n", "interval: 250ms\n",
		"ringbuf_size: 8388608\n", "flush_interval: 100ms\n", "interval: 3s\n", "local_ports: [5201]\n",
		"remote_ports: []\n", "remote_cidrs: [10.1.0.0/16]\n", "path: " + out + "\n", "level: debug\n",
		"format: text\n", "listen: 127.0.0.1:9100\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if r.stderr != "" {
		t.Errorf("stderr: %q", r.stderr)
	}

	// What flowd config prints is a config file that gives the same result.
	again := flowd(t, env(), "config", "--config", writeConfig(t, r.stdout))
	if again.code != 0 || again.stdout != r.stdout {
		t.Errorf("printed config does not load to itself: exit %d\n%s\nvs\n%s%s", again.code, again.stdout, r.stdout, again.stderr)
	}

	// The documented default file equals the built-in defaults.
	def := flowd(t, env(), "config")
	file := flowd(t, env(), "config", "--config", "../../configs/flowd.yaml")
	if def.code != 0 || file.code != 0 || def.stdout != file.stdout {
		t.Errorf("configs/flowd.yaml differs from the defaults:\n%s\nvs\n%s%s%s", file.stdout, def.stdout, file.stderr, def.stderr)
	}
}

func TestVersion(t *testing.T) {
	r := flowd(t, env(), "version")
	if r.code != 0 {
		t.Fatalf("exit status %d: %s", r.code, r.stderr)
	}
	if !strings.HasPrefix(r.stdout, "flowd "+testVersion+" (commit ") || !strings.Contains(r.stdout, "go1.") {
		t.Errorf("version output %q", r.stdout)
	}
	for _, flag := range []string{"--version", "-v"} {
		if f := flowd(t, env(), flag); f.code != 0 || f.stdout != r.stdout || f.stderr != "" {
			t.Errorf("flowd %s: exit %d, stdout %q, stderr %q; want what flowd version prints", flag, f.code, f.stdout, f.stderr)
		}
	}

	// Built without the VCS stamp, flowd shows the commit the build gave it
	// (as the Makefile does).
	bin := filepath.Join(t.TempDir(), "flowd")
	build := exec.Command("go", "build", "-buildvcs=false", "-ldflags", "-X main.commit=0123abcd-dirty", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -buildvcs=false: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "flowd dev (commit 0123abcd-dirty, go1.") {
		t.Errorf("flowd version built with -buildvcs=false: %q, %v", out, err)
	}
}

// TestEBPFForcedUnavailable: backends: [ebpf] where ebpf cannot load (an
// unprivileged user) is a runtime error: exit status 1, one clear line.
func TestEBPFForcedUnavailable(t *testing.T) {
	requireCgroup2(t)
	// A directory the unprivileged user can read.
	dir, err := os.MkdirTemp("", "flowd-cmd-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "flowd.yaml")
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("backends: [ebpf]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, flowdBin, "run", "--config", path)
	cmd.Env = env()
	if os.Geteuid() == 0 {
		// Run as nobody, who may not load BPF programs.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Fatalf("exit status %d (%v), want 1; stderr:\n%s", code, err, stderr.String())
	}
	last := lastLine(stderr.String())
	if !strings.HasPrefix(last, "flowd: ") || !strings.Contains(last, "ebpf backend") {
		t.Errorf("last stderr line %q does not explain that the ebpf backend failed", last)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// lockedBuffer collects a child's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestSignalExit: flowd run stops cleanly, with exit status 0, on SIGINT
// and on SIGTERM.
func TestSignalExit(t *testing.T) {
	testutil.RequireRoot(t)
	requireCgroup2(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			cg := testutil.TempCgroup(t) // an empty cgroup: nothing to record
			out := filepath.Join(t.TempDir(), "records.jsonl")
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			listen := ln.Addr().String()
			ln.Close()
			path := writeConfig(t, fmt.Sprintf("cgroup: %s\noutput:\n  path: %s\nmetrics:\n  listen: %q\n", cg, out, listen))

			cmd := exec.Command(flowdBin, "run", "--config", path)
			cmd.Env = env()
			stderr := &lockedBuffer{}
			cmd.Stderr = stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()

			deadline := time.After(20 * time.Second)
		wait:
			for !strings.Contains(stderr.String(), "recording flows") {
				select {
				case <-exited:
					t.Fatalf("flowd exited (status %d) instead of recording; as root the netlink backend at least must run:\n%s", cmd.ProcessState.ExitCode(), stderr.String())
				case <-deadline:
					cmd.Process.Kill()
					t.Fatalf("flowd did not start:\n%s", stderr.String())
				case <-time.After(10 * time.Millisecond):
					continue wait
				}
			}
			if _, err := os.Stat(out); err != nil {
				t.Errorf("output file not created: %v", err)
			}
			begin := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("flowd did not stop on %v:\n%s", sig, stderr.String())
			}
			t.Logf("flowd stopped %v after %v", time.Since(begin).Round(time.Millisecond), sig)
			if code := cmd.ProcessState.ExitCode(); code != 0 {
				t.Errorf("exit status %d after %v, want 0; stderr:\n%s", code, sig, stderr.String())
			}
			if s := stderr.String(); !strings.Contains(s, "msg=stopped") {
				t.Errorf("no \"stopped\" in the log:\n%s", s)
			}
			if conn, err := net.Dial("tcp", listen); err == nil {
				conn.Close()
				t.Errorf("metrics endpoint %s still open after exit", listen)
			}
		})
	}
}

// TestFill: flowd fill turns an output written with output.samples: changes,
// split in two files, into the lines output.samples: full writes for the
// same records; input that starts in the middle of an output passes its
// orphaned partial samples through with a warning; a bad line is reported
// with its file and line, and the partial samples after it are passed
// through too, until their flow's next complete line, not completed from
// the line before the one lost.
func TestFill(t *testing.T) {
	var changes, full bytes.Buffer
	jc, jf := sink.NewJSONL(&changes), sink.NewJSONL(&full)
	jc.SetSamples(sink.SamplesChanges)
	t0 := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	for i := range 40 {
		at := t0.Add(time.Duration(i) * time.Millisecond)
		if i >= 20 { // the first sample of each flow from here on is complete again
			at = at.Add(sink.CompleteEvery)
		}
		r := flow.Record{Time: at, Backend: []string{"ebpf", "netlink"}[i%2],
			Event: flow.EventSample, Cookie: uint64(i % 4), Family: 4, State: flow.StateEstablished, CA: "cubic",
			LocalAddr: netip.MustParseAddr("10.0.0.1"), RemoteAddr: netip.MustParseAddr("10.0.0.2"), LocalPort: 5201, RemotePort: 40000}
		if i < 4 {
			r.Event = flow.EventOpen
		}
		r.Info.Set(flow.FieldRTT, uint64(100+i%3))
		r.Info.Set(flow.FieldSndCwnd, uint64(10+i/8))
		r.Info.Set(flow.FieldBytesAcked, uint64(i*1448))
		for _, j := range []*sink.JSONL{jc, jf} {
			if err := j.Write(&r); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, j := range []*sink.JSONL{jc, jf} {
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(changes.String(), `"partial":true`) {
		t.Fatal("no partial sample to fill")
	}
	lines := strings.SplitAfter(changes.String(), "\n")
	lines = lines[:len(lines)-1]
	fullLines := strings.SplitAfter(full.String(), "\n")
	fullLines = fullLines[:len(fullLines)-1]
	dir := t.TempDir()
	first, second := filepath.Join(dir, "records.jsonl.1"), filepath.Join(dir, "records.jsonl")
	if err := os.WriteFile(first, []byte(strings.Join(lines[:17], "")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(second, []byte(strings.Join(lines[17:], "")), 0o644); err != nil {
		t.Fatal(err)
	}
	r := flowd(t, env(), "fill", first, second)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("fill: exit %d, stderr %q", r.code, r.stderr)
	}
	if r.stdout != full.String() {
		t.Errorf("fill printed\n%s\nwant what output.samples: full writes\n%s", r.stdout, full.String())
	}

	// The second file alone: its first partial samples have no base.
	r = flowd(t, env(), "fill", second)
	if r.code != 0 || !strings.Contains(r.stderr, "records.jsonl:1: partial sample of") || r.stdout == "" {
		t.Errorf("fill of the second file alone: exit %d, stderr %q", r.code, r.stderr)
	}
	if got, want := strings.Count(r.stdout, "\n"), len(lines)-17; got != want {
		t.Errorf("fill of the second file alone printed %d lines, want %d", got, want)
	}

	// Bad lines, added between records or in place of one: each is
	// reported with its file and line and left out, the good lines around
	// them are printed, and the exit status is 1; --strict stops at the
	// first, after the lines before it.
	long := "{\"time\":\"" + strings.Repeat("x", 70<<10) + "\"}\n"
	var in []fillLine
	for i := range lines {
		switch i {
		case 3:
			in = append(in, fillLine{bad: "{\"time\":1}\n", why: "decoding record"})
		case 9:
			in = append(in, fillLine{bad: long, why: "line longer than"})
		}
		in = append(in, fillLine{good: i})
	}
	bad := filepath.Join(dir, "bad.jsonl")
	runFill(t, bad, in, lines, fullLines)
	r = flowd(t, env(), "fill", "--strict", bad)
	if r.code != 1 || r.stdout != strings.Join(fullLines[:3], "") || !strings.HasPrefix(r.stderr, "flowd: "+bad+":4: decoding record") ||
		strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("fill --strict: exit %d, stdout\n%s\nstderr %q; want 1, the first 3 lines, line 4 reported", r.code, r.stdout, r.stderr)
	}

	// A partial sample cut short where it stood (a corrupted line): its
	// flow's next partial sample, which leaves out the snd_cwnd the lost
	// line changed, is printed as it is, not with the snd_cwnd of the line
	// before the lost one.
	const lost, next = 9, 13 // two partial samples of netlink flow 1
	for _, i := range []int{lost, next} {
		if !strings.Contains(lines[i], `"partial":true`) || !strings.Contains(lines[i], `"backend":"netlink"`) || !strings.Contains(lines[i], `"cookie":1,`) {
			t.Fatalf("line %d is not a partial sample of netlink flow 1: %s", i, lines[i])
		}
	}
	if strings.Contains(lines[next], `"snd_cwnd"`) || !strings.Contains(lines[lost], `"snd_cwnd"`) {
		t.Fatalf("the lost line does not change snd_cwnd, or the next one does not leave it out:\n%s%s", lines[lost], lines[next])
	}
	in = in[:0]
	for i := range lines {
		if i == lost {
			in = append(in, fillLine{bad: lines[i][:len(lines[i])/2] + "\n", why: "decoding record"})
		} else {
			in = append(in, fillLine{good: i})
		}
	}
	r = runFill(t, filepath.Join(dir, "corrupted.jsonl"), in, lines, fullLines)
	if !strings.Contains(r.stdout, lines[next]) {
		t.Errorf("the partial sample after the corrupted line was not printed as it is:\n%s", lines[next])
	}
}

// A fillLine is a line of flowd fill's input: a line of the test's output
// (good, an index), or a bad one.
type fillLine struct {
	good int
	bad  string // the line, when not empty
	why  string // the start of the reason fill gives for it
}

// runFill writes the lines in to path, runs flowd fill on it and checks
// what it prints against what fill promises: every good line complete
// (fullLines), but a partial sample printed as it is (lines), with a
// warning the first time, when its flow has had no complete line since
// the last bad line; each bad line reported, then the count.
func runFill(t *testing.T, path string, in []fillLine, lines, fullLines []string) result {
	t.Helper()
	var input, stdout strings.Builder
	var stderr []string
	known, warned := map[string]bool{}, map[string]bool{}
	nbad := 0
	for n, l := range in {
		if l.bad != "" {
			input.WriteString(l.bad)
			stderr = append(stderr, fmt.Sprintf("flowd fill: %s:%d: %s", path, n+1, l.why))
			nbad++
			clear(known)
			clear(warned)
			continue
		}
		input.WriteString(lines[l.good])
		var rec flow.Record
		partial, err := sink.ParseLine([]byte(lines[l.good]), &rec)
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprint(rec.Backend, rec.Cookie)
		if partial && !known[id] {
			stdout.WriteString(lines[l.good])
			if !warned[id] {
				warned[id] = true
				stderr = append(stderr, fmt.Sprintf("flowd fill: %s:%d: partial sample of %s flow %d with no earlier line of that flow: printed as it is",
					path, n+1, rec.Backend, rec.Cookie))
			}
			continue
		}
		known[id] = true
		stdout.WriteString(fullLines[l.good])
	}
	stderr = append(stderr, fmt.Sprintf("flowd: %d of %d lines were not flowd records (left out)", nbad, len(in)))
	if err := os.WriteFile(path, []byte(input.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r := flowd(t, env(), "fill", path)
	if r.code != 1 {
		t.Errorf("fill %s: exit %d, want 1", path, r.code)
	}
	if got, want := strings.SplitAfter(r.stdout, "\n"), strings.SplitAfter(stdout.String(), "\n"); !slices.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Errorf("fill %s printed %d lines, want %d; line %d is\n%s\nwant\n%s", path, len(got)-1, len(want)-1, i+1,
			strings.Join(got[i:min(i+1, len(got))], ""), strings.Join(want[i:min(i+1, len(want))], ""))
	}
	got := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	ok := len(got) == len(stderr)
	for i := 0; ok && i < len(got); i++ {
		ok = strings.HasPrefix(got[i], stderr[i])
	}
	if !ok {
		t.Errorf("fill %s: stderr\n%s\nwant lines that begin\n%s", path, r.stderr, strings.Join(stderr, "\n"))
	}
	return r
}
