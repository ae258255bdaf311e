package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// collectorModule is the directory, relative to the repository root, of
// the Go module that builds the test collector: the OpenTelemetry
// Collector's own modules, kept out of flowd's go.mod.
const collectorModule = "internal/otelcol"

// OTelCollector is an OpenTelemetry Collector built from internal/otelcol,
// receiving OTLP over gRPC and HTTP on loopback and writing every request
// of logs it accepts to a file as OTLP JSON, one file per start, and of
// metrics to another (or, to measure the sender, discarding them).
type OTelCollector struct {
	GRPC string // host:port of the OTLP/gRPC receiver
	HTTP string // host:port of the OTLP/HTTP receiver

	tb      testing.TB
	bin     string
	dir     string
	opts    OTelCollectorOptions
	cmd     *exec.Cmd
	exited  chan struct{}
	outputs []string
	metrics []string
}

// OTelCollectorOptions configure the collector. With CertFile and KeyFile
// (PEM) the receivers serve TLS, and with ClientCAFile they require client
// certificates that chain to it. Discard makes the collector drop what it
// receives instead of writing it.
type OTelCollectorOptions struct {
	CertFile, KeyFile string
	ClientCAFile      string
	Discard           bool
}

// StartOTelCollector builds the collector (once per test binary; the binary is
// cached across runs by the hash of its module) and starts it on free
// loopback ports. It is killed when the test ends.
func StartOTelCollector(tb testing.TB, opts OTelCollectorOptions) *OTelCollector {
	tb.Helper()
	c := &OTelCollector{
		tb:   tb,
		bin:  OTelCollectorBinary(tb),
		dir:  tb.TempDir(),
		opts: opts,
		GRPC: FreeLoopbackAddr(tb),
		HTTP: FreeLoopbackAddr(tb),
	}
	tb.Cleanup(func() { c.Kill() })
	c.Start()
	return c
}

// Outputs returns the files of logs the collector wrote, one per start, in
// order.
func (c *OTelCollector) Outputs() []string { return c.outputs }

// MetricsOutputs returns the files of metrics the collector wrote, one per
// start, in order.
func (c *OTelCollector) MetricsOutputs() []string { return c.metrics }

// Start starts the collector again (after Kill or Stop) on the same ports,
// writing to a new file, and waits until both receivers accept
// connections.
func (c *OTelCollector) Start() {
	tb := c.tb
	tb.Helper()
	if c.cmd != nil {
		tb.Fatal("collector already running")
	}
	out := filepath.Join(c.dir, fmt.Sprintf("output-%d.json", len(c.outputs)+1))
	metricsOut := filepath.Join(c.dir, fmt.Sprintf("metrics-%d.json", len(c.outputs)+1))
	cfgPath := filepath.Join(c.dir, fmt.Sprintf("config-%d.yaml", len(c.outputs)+1))
	if err := os.WriteFile(cfgPath, []byte(c.config(out, metricsOut)), 0o644); err != nil {
		tb.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(c.dir, fmt.Sprintf("collector-%d.log", len(c.outputs)+1)))
	if err != nil {
		tb.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(c.bin, "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The collector allocates some 80 objects per record it decodes: a
	// larger heap target spares it much of its garbage collection, as a
	// collector tuned for a fleet's throughput would be.
	cmd.Env = append(os.Environ(), "GOGC=400")
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting the collector: %v", err)
	}
	c.cmd, c.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(c.exited)
	c.outputs = append(c.outputs, out)
	c.metrics = append(c.metrics, metricsOut)

	deadline := time.Now().Add(30 * time.Second)
	for _, addr := range []string{c.GRPC, c.HTTP} {
		for {
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-c.exited:
				log, _ := os.ReadFile(logFile.Name())
				tb.Fatalf("the collector exited while starting:\n%s", log)
			default:
			}
			if time.Now().After(deadline) {
				tb.Fatalf("the collector's receiver %s did not come up: %v", addr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// CPU returns the CPU time (user and system) the running collector has
// used since it started.
func (c *OTelCollector) CPU(tb testing.TB) time.Duration {
	tb.Helper()
	if c.cmd == nil {
		tb.Fatal("collector not running")
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	// The fields after the command name, which is in parentheses: utime
	// and stime are the 12th and 13th, in clock ticks (USER_HZ, 100).
	_, after, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(after)
	if len(f) < 13 {
		tb.Fatalf("/proc/%d/stat: %q", c.cmd.Process.Pid, stat)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			tb.Fatal(err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// Kill kills the collector (SIGKILL) and waits for it to exit. Everything
// it accepted is in its file: the file exporter writes each request
// before the receiver answers it.
func (c *OTelCollector) Kill() { c.stop(syscall.SIGKILL) }

// Stop stops the collector as a service manager would (SIGTERM).
func (c *OTelCollector) Stop() { c.stop(syscall.SIGTERM) }

func (c *OTelCollector) stop(sig syscall.Signal) {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(sig)
	select {
	case <-c.exited:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.exited
	}
	c.cmd = nil
}

// config returns the collector's configuration, writing logs to out and
// metrics to metricsOut.
func (c *OTelCollector) config(out, metricsOut string) string {
	tls := ""
	if o := c.opts; o.CertFile != "" {
		tls = fmt.Sprintf("\n        tls: {cert_file: %q, key_file: %q, client_ca_file: %q}", o.CertFile, o.KeyFile, o.ClientCAFile)
	}
	exporter, metricsExporter := "file", "file/metrics"
	if c.opts.Discard {
		exporter, metricsExporter = "nop", "nop"
	}
	// With rotation the file exporter writes each request through, not
	// into a buffer flushed on a timer, so a killed collector has
	// written all it accepted.
	return fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %q%s
      http:
        endpoint: %q%s
exporters:
  file:
    path: %q
    format: json
    rotation: {max_megabytes: 100000}
  file/metrics:
    path: %q
    format: json
    rotation: {max_megabytes: 100000}
  nop:
service:
  telemetry:
    logs: {level: warn}
    metrics: {level: none}
  pipelines:
    logs: {receivers: [otlp], exporters: [%s]}
    metrics: {receivers: [otlp], exporters: [%s]}
`, c.GRPC, tls, c.HTTP, tls, out, metricsOut, exporter, metricsExporter)
}

// FreeLoopbackAddr returns 127.0.0.1:port with a port nothing listens on.
func FreeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// collectorBuild builds the collector once per test binary.
var collectorBuild = sync.OnceValues(buildCollector)

// OTelCollectorBinary returns the path of the test collector's executable,
// building it when it is not cached (a minute or two on a fresh machine;
// seconds to link otherwise).
func OTelCollectorBinary(tb testing.TB) string {
	tb.Helper()
	bin, err := collectorBuild()
	if err != nil {
		tb.Fatalf("building the test collector: %v", err)
	}
	return bin
}

// BuildOTelCollector builds the test collector (cached, as
// OTelCollectorBinary) for a program that is not a test: the benchmarks.
func BuildOTelCollector() (string, error) { return collectorBuild() }

// buildCollector builds internal/otelcol into the user's cache directory,
// under a name made of the hash of its sources and the Go version, so that
// a cached binary is used only for the sources it was built from.
func buildCollector() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	src := filepath.Join(root, collectorModule)
	h := sha256.New()
	h.Write([]byte(runtime.Version()))
	for _, name := range []string{"go.mod", "go.sum", "main.go"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "flowd-test")
	bin := filepath.Join(dir, "otelcol-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
	cmd := exec.Command(goCmd, "build", "-trimpath", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("go build in %s: %w\n%s", src, err, out)
	}
	// Several test binaries may build at once: the last rename wins, and
	// every one of them is the same program.
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	// Binaries of older sources are not used again.
	stale, _ := filepath.Glob(filepath.Join(dir, "otelcol-*"))
	for _, old := range stale {
		if old != bin && !strings.HasSuffix(old, ".tmp") {
			os.Remove(old)
		}
	}
	return bin, nil
}

// repoRoot returns the directory of flowd's go.mod, above the working
// directory of the test.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/flowd/flowd\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("flowd's go.mod not found above the working directory")
		}
		dir = parent
	}
}
