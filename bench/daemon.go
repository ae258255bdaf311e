package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// flowdConfig is what a run changes in flowd's configuration; everything
// else keeps its default (configs/flowd.yaml).
type flowdConfig struct {
	Backend         string        // ebpf or netlink
	Mode            string        // ebpf.mode; "" = default (poll)
	Interval        time.Duration // ebpf.interval, when IntervalSet
	IntervalSet     bool          // set ebpf.interval (0s is a value: a sample every RTT)
	NetlinkInterval time.Duration // netlink.interval; 0 = default
	Members         []string      // output.tcp_info; nil = default (every member)
	OTLP            string        // output.otlp.endpoint; "" = no export
}

// Keys returns the non-default keys, for the report.
func (c flowdConfig) Keys() string {
	parts := []string{fmt.Sprintf("backends: [%s]", c.Backend)}
	if c.Mode != "" {
		parts = append(parts, "ebpf.mode: "+c.Mode)
	}
	if c.IntervalSet {
		parts = append(parts, "ebpf.interval: "+fmtDuration(c.Interval))
	}
	if c.NetlinkInterval != 0 {
		parts = append(parts, "netlink.interval: "+fmtDuration(c.NetlinkInterval))
	}
	if c.Members != nil {
		parts = append(parts, "output.tcp_info: ["+strings.Join(c.Members, ", ")+"]")
	}
	if c.OTLP != "" {
		parts = append(parts, "output.otlp.endpoint: a collector on loopback")
	}
	return strings.Join(parts, ", ")
}

// YAML returns the configuration file of a run.
func (c flowdConfig) YAML(cgroupPath, output string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "backends: [%s]\ncgroup: %q\n", c.Backend, cgroupPath)
	if c.Mode != "" || c.IntervalSet {
		b.WriteString("ebpf:\n")
		if c.Mode != "" {
			fmt.Fprintf(&b, "  mode: %s\n", c.Mode)
		}
		if c.IntervalSet {
			fmt.Fprintf(&b, "  interval: %s\n", fmtDuration(c.Interval))
		}
	}
	if c.NetlinkInterval != 0 {
		fmt.Fprintf(&b, "netlink:\n  interval: %s\n", fmtDuration(c.NetlinkInterval))
	}
	fmt.Fprintf(&b, "output:\n  path: %q\n", output)
	if c.Members != nil {
		fmt.Fprintf(&b, "  tcp_info: [%s]\n", strings.Join(c.Members, ", "))
	}
	if c.OTLP != "" {
		fmt.Fprintf(&b, "  otlp:\n    endpoint: %q\n", c.OTLP)
	}
	return b.String()
}

// fmtDuration prints d as flowd's config reads it: "0s", "100ms", "1s".
func fmtDuration(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	return d.String()
}

// daemon is one run of the flowd binary.
type daemon struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{}
	cg     *tempCgroup // flowd's own cgroup: its CPU time, µs-precise
	Output string      // the records file
}

// startDaemon runs bin with cfg on the monitored cgroup mon, inside the
// cgroup own (never inside mon), on CPU cpu when it is ≥ 0, and waits
// until it records.
func startDaemon(bin, dir string, cfg flowdConfig, mon, own *tempCgroup, cpu int) (*daemon, error) {
	f, err := os.CreateTemp(dir, "flowd-*.yaml")
	if err != nil {
		return nil, err
	}
	output := strings.TrimSuffix(f.Name(), ".yaml") + ".jsonl"
	if _, err := f.WriteString(cfg.YAML(mon.path, output)); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	d := &daemon{stderr: &lockedBuffer{}, exited: make(chan struct{}), cg: own, Output: output}
	name, args := pinned(cpu, bin, "run", "--config", f.Name())
	d.cmd = exec.Command(name, args...)
	d.cmd.Stderr = d.stderr
	d.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: own.fd}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting flowd: %w", err)
	}
	go func() { _ = d.cmd.Wait(); close(d.exited) }()
	deadline := time.After(30 * time.Second)
	for !strings.Contains(d.stderr.String(), "recording flows") {
		select {
		case <-d.exited:
			return nil, fmt.Errorf("flowd exited (%s) before recording: %s", d.cmd.ProcessState, logTail(d.stderr.String()))
		case <-deadline:
			d.kill()
			return nil, fmt.Errorf("flowd did not start recording within 30 s: %s", logTail(d.stderr.String()))
		case <-time.After(5 * time.Millisecond):
		}
	}
	return d, nil
}

// PID returns the daemon's process id.
func (d *daemon) PID() int { return d.cmd.Process.Pid }

// CPU returns the CPU time flowd has used so far.
func (d *daemon) CPU() (time.Duration, error) { return d.cg.cpu() }

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() error {
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stopping flowd: %w", err)
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		d.kill()
		return fmt.Errorf("flowd did not exit within 10 s of SIGTERM: %s", logTail(d.stderr.String()))
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("flowd exited with status %d: %s", code, logTail(d.stderr.String()))
	}
	return nil
}

// kill ends the daemon at once (on the error paths).
func (d *daemon) kill() {
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

var dropsRE = regexp.MustCompile(`drops_total=(\d+)`)

// Drops returns the last ring buffer drop total flowd logged.
func (d *daemon) Drops() uint64 {
	m := dropsRE.FindAllStringSubmatch(d.stderr.String(), -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.ParseUint(m[len(m)-1][1], 10, 64)
	return n
}

// memory returns VmHWM and VmRSS (kB) of the process.
func memory(pid int) (hwm, rss int, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, 0, err
	}
	return parseStatus(b)
}

func parseStatus(b []byte) (hwm, rss int, err error) {
	s := bufio.NewScanner(bytes.NewReader(b))
	found := 0
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		if err != nil {
			return 0, 0, fmt.Errorf("parsing %s %q: %w", k, v, err)
		}
		if k == "VmHWM" {
			hwm = n
		} else {
			rss = n
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("no VmHWM and VmRSS in status")
	}
	return hwm, rss, nil
}

// countLines counts the records in a JSON Lines file.
func countLines(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return bytes.Count(b, []byte{'\n'}), nil
}

// countEvents counts the records of one event in a JSON Lines file.
func countEvents(path, event string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return bytes.Count(b, []byte(`"event":"`+event+`"`)), nil
}

// lockedBuffer is a bytes.Buffer safe for a writer and readers.
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

// logTail returns the last lines of a log, for error messages.
func logTail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
