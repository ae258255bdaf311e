// Command run is `make test-kernels`: it runs flowd's privileged tests on
// the kernels of the matrix, each booted under qemu, and on the host, and
// prints per kernel which checks passed and which tcp_info members the
// kernel provides. It exits non-zero when any guest fails, times out,
// misses a marker, skips a privileged test or runs none.
//
//	go run ./kernels/run [-v] [-accel tcg|kvm] [-run REGEXP] [-timeout 240s]
//
// Kernels are cached in $FLOWD_KERNEL_CACHE (default .cache/kernels);
// initramfs images and console logs go to out/kernels.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/kernels"
)

// matrix is the kernels every run boots. The host's kernel is the other
// column of the presence table: `make test` runs everything there.
func matrix() []kernels.DebianKernel {
	return []kernels.DebianKernel{
		{Name: "debian-6.1", Package: `^linux-image-6\.1\.0-([0-9]+)-cloud-amd64-unsigned$`},
	}
}

// guestModules are loaded in the guest when the kernel builds them as
// modules (Debian does): the netlink backend needs inet_diag for TCP, the
// ebpf backend's receive-only test a veth link with a tbf bottleneck.
var guestModules = []string{"net/ipv4/inet_diag.ko", "net/ipv4/tcp_diag.ko", "drivers/net/veth.ko", "net/sched/sch_tbf.ko"}

// testPackages are built as static test binaries and run in the guest,
// each as a step named after its package (go test -c names the binaries so).
var testPackages = []struct{ step, pkg string }{
	{"ebpf", "./backends/ebpf"},
	{"netlink", "./backends/netlink"},
	{"backends", "./backends"},
	{"checks", "./kernels/checks"},
}

// guestSkip names tests not run in the guest: unit tests that exercise no
// kernel and only cost time under emulation.
const guestSkip = "^TestScope$"

// checks are the tests that prove what the kernel matrix promises; each
// must PASS on each kernel.
var checks = []kernels.Check{
	check("ebpf", "TestTransfer/ipv4", "load, attach to a cgroup, IPv4 transfer vs TCP_INFO, open/state/close records"),
	check("ebpf", "TestTransfer/ipv6", "the same over IPv6"),
	check("ebpf", "TestRTTSamples", "interval 0: a sample per RTT; poll mode's state records hold no tcp_info"),
	check("ebpf", "TestProcess", "records name the process that connected the flow, none for accepted flows"),
	check("ebpf", "TestModes/poll_200ms", "poll mode: one sample per interval of a flow that moves"),
	check("ebpf", "TestReceiveOnly", "a flow that only receives is sampled every interval, also at 0s (tbf bottleneck)"),
	check("ebpf", "TestIdleInterval", "an idle flow gets a sample per idle interval, and one a walk after it moves"),
	check("ebpf", "TestExistingFlows", "flows that began before the backend: open (existing), samples, close = TCP_INFO"),
	check("ebpf", "TestStateRecords/poll", "open says ESTABLISHED on both ends; no state record repeats a state; a walk samples a flow whose state changed"),
	check("ebpf", "TestModes/transition", "transition mode: no samples"),
	check("ebpf", "TestOutsideCgroup", "sockets outside the cgroup are not seen"),
	check("ebpf", "TestDrops", "a full ring buffer counts drops"),
	check("ebpf", "TestCloseDetaches", "Close detaches the program"),
	check("ebpf", "TestAdoptAfterRestart", "flows of an earlier instance are adopted at start"),
	check("ebpf", "TestPresenceMatchesKernel", "presence mask = this kernel's tcp_sock (BTF)"),
	check("ebpf", "TestCgroupRemovedAndCreatedAgain", "cgroup removed: its live flow recorded to its close; created again: attached again, older flows found"),
	check("ebpf", "TestCgroupRemovedStops", "cgroup_removed: exit stops the ebpf backend"),
	check("checks", "TestJSONPresence", "JSON record omits exactly the absent members"),
	check("checks", "TestNetlinkPresence", "netlink reports exactly the kernel's tcp_info members"),
	check("netlink", "TestLiveFlow", "netlink backend (inet_diag) vs TCP_INFO"),
	check("netlink", "TestLiveOpenOnceEstablished", "netlink: a client caught in SYN_SENT opens once established"),
	check("netlink", "TestNetns", "netlink: the namespaces of the cgroup's processes, or the pinned one"),
	check("netlink", "TestNetnsDisappears", "netlink: a namespace left by its last process is dropped"),
	check("netlink", "TestCgroupRemovedAndCreatedAgain/scanned", "netlink: cgroup removed under a live flow, then created again"),
	check("netlink", "TestCgroupRemovedAndCreatedAgain/pinned", "netlink: the same with a pinned namespace"),
	check("netlink", "TestCgroupRemovedStops", "netlink: cgroup_removed: exit stops the backend"),
	check("backends", "TestBackendsAgree/ipv4", "ebpf and netlink agree on one IPv4 flow"),
	check("backends", "TestBackendsAgree/ipv6", "ebpf and netlink agree on one IPv6 flow"),
}

func check(step, test, what string) kernels.Check {
	return kernels.Check{Step: step, Test: test, What: what}
}

type options struct {
	cache, out string
	timeout    time.Duration
	accel      string
	run        string
	verbose    bool
}

func main() {
	cache := os.Getenv("FLOWD_KERNEL_CACHE")
	if cache == "" {
		cache = filepath.Join(".cache", "kernels")
	}
	var o options
	flag.StringVar(&o.cache, "cache", cache, "where downloaded kernels are kept ($FLOWD_KERNEL_CACHE)")
	flag.StringVar(&o.out, "out", filepath.Join("out", "kernels"), "where test binaries, initramfs images and console logs go")
	flag.DurationVar(&o.timeout, "timeout", 240*time.Second, "how long one guest may run before it is killed")
	// Nested KVM is not dependable on CI machines (here /dev/kvm opens
	// but the guest never runs): emulate unless told otherwise.
	flag.StringVar(&o.accel, "accel", "tcg", "tcg (emulate the CPU) or kvm (where nested virtualization works)")
	flag.StringVar(&o.run, "run", "", "run only the guest tests matching this regexp (go test -run); checks that do not run are then not failures")
	flag.BoolVar(&o.verbose, "v", false, "copy the guests' consoles to standard output")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintf(os.Stderr, "test-kernels: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	start := time.Now()
	if os.Geteuid() != 0 {
		return errors.New("needs root: apt-get, and the host's privileged presence test")
	}
	if o.accel != "tcg" && o.accel != "kvm" {
		return fmt.Errorf("-accel %q: want tcg or kvm", o.accel)
	}
	kvm := o.accel == "kvm"
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}

	// Build while the kernels download.
	var buildErr error
	built := make(chan struct{})
	go func() {
		defer close(built)
		t := time.Now()
		buildErr = build(ctx, o.out)
		logf("built the guest's /init and %d static test binaries in %s", len(testPackages), since(t))
	}()
	var ks []*kernels.Kernel
	for _, d := range matrix() {
		k, err := d.Fetch(ctx, o.cache, logf)
		if err != nil {
			return fmt.Errorf("fetching %s: %w", d.Name, err)
		}
		ks = append(ks, k)
	}
	<-built
	if buildErr != nil {
		return buildErr
	}

	// The host's presence column, while the guests run.
	var (
		host    *kernels.Console
		hostErr error
		wg      sync.WaitGroup
	)
	wg.Go(func() { host, hostErr = runOnHost(ctx, o.out) })

	var (
		problems []string // "kernel: problem"
		failed   []string // kernels
		consoles []*kernels.Console
		names    []string
	)
	for _, k := range ks {
		c, probs, err := boot(ctx, o, k, kvm)
		if err != nil {
			return err
		}
		consoles = append(consoles, c)
		names = append(names, k.Release)
		if len(probs) > 0 {
			failed = append(failed, k.Name)
		}
		for _, p := range probs {
			problems = append(problems, k.Name+": "+p)
		}
	}
	wg.Wait()

	fmt.Printf("\n== checks\n")
	kernels.PrintChecks(os.Stdout, checks, names, consoles)

	if hostErr != nil {
		logf("host presence tests: %v", hostErr)
		host = &kernels.Console{}
	}
	problems = append(problems, printPresence(ks, host, consoles)...)

	var pass, fail, skip int
	for _, c := range consoles {
		for _, s := range c.Steps {
			for _, t := range s.Tests {
				switch t.Status {
				case "PASS":
					pass++
				case "FAIL":
					fail++
				case "SKIP":
					skip++
				}
			}
		}
	}
	fmt.Printf("\n== result\n")
	for _, p := range problems {
		fmt.Println("  - " + p)
	}
	fmt.Printf("test-kernels took %s\n", since(start))
	fmt.Printf("kernels: %d passed, %d failed, %d skipped\n", pass, fail, skip)
	if len(problems) > 0 {
		return fmt.Errorf("%d problems (kernels failed: %s)", len(problems), strings.Join(failed, ", "))
	}
	return nil
}

// printPresence prints which tcp_info members each kernel provides, the
// host's first, and returns disagreements between the tests that tell.
func printPresence(ks []*kernels.Kernel, host *kernels.Console, consoles []*kernels.Console) []string {
	fmt.Printf("\n== tcp_info members each kernel provides\n")
	fmt.Printf("ebpf: in the ebpf backend's records and JSON (computed from tcp_sock, checked against its BTF); absent members are left out\n")
	fmt.Printf("tcp_info: in the kernel's own tcp_info (netlink backend, getsockopt)\n")
	fmt.Printf("host = %s", release())
	for _, k := range ks {
		fmt.Printf(", %s = %s", k.Name, k.Release)
	}
	fmt.Println()
	var (
		cols     []kernels.Presence
		problems []string
	)
	labels := []string{"host"}
	for _, k := range ks {
		labels = append(labels, k.Name)
	}
	for i, c := range append([]*kernels.Console{host}, consoles...) {
		e, ti, probs := kernels.PresenceOf(labels[i], c)
		cols = append(cols, e, ti)
		problems = append(problems, probs...)
	}
	var members []string
	for f := flow.Field(0); f < flow.NumFields; f++ {
		members = append(members, f.Name())
	}
	kernels.PrintPresence(os.Stdout, members, cols)
	return problems
}

// boot runs the test binaries on kernel k and judges the console.
func boot(ctx context.Context, o options, k *kernels.Kernel, kvm bool) (*kernels.Console, []string, error) {
	plan := &kernels.Plan{}
	var files []kernels.InitramfsFile
	files = append(files, kernels.InitramfsFile{Name: "init", Source: filepath.Join(o.out, "init"), Mode: 0o755})
	for _, m := range guestModules {
		// Absent: built in (or missing, which the netlink tests will show).
		if _, err := os.Stat(k.Module(m)); err == nil {
			name := "lib/modules/" + k.Release + "/kernel/" + m
			files = append(files, kernels.InitramfsFile{Name: name, Source: k.Module(m), Mode: 0o644})
			plan.Modules = append(plan.Modules, "/"+name)
		}
	}
	expect := kernels.Expect{Required: map[string][]string{}, Filtered: o.run != ""}
	files = append(files, kernels.InitramfsFile{Name: "flowd/bin/test2json", Source: filepath.Join(o.out, "bin", "test2json"), Mode: 0o755})
	for _, p := range testPackages {
		bin := "flowd/bin/" + p.step + ".test"
		files = append(files, kernels.InitramfsFile{Name: bin, Source: filepath.Join(o.out, "bin", p.step+".test"), Mode: 0o755})
		args := testArgs(p.step, "/"+bin, "-test.timeout="+(o.timeout*2/3).String(), "-test.skip="+guestSkip)
		if o.run != "" {
			args = append(args, "-test.run="+o.run)
		}
		plan.Steps = append(plan.Steps, kernels.Step{Name: p.step, Path: "/flowd/bin/test2json", Args: args})
		expect.Steps = append(expect.Steps, p.step)
	}
	for _, c := range checks {
		expect.Required[c.Step] = append(expect.Required[c.Step], c.Test)
	}

	initrd := filepath.Join(o.out, k.Name+".initramfs.gz")
	if err := writeInitramfs(initrd, plan, files); err != nil {
		return nil, nil, err
	}
	logPath := filepath.Join(o.out, k.Name+".console.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	defer logFile.Close()
	var console io.Writer = logFile
	if o.verbose {
		console = io.MultiWriter(logFile, prefixWriter(os.Stdout, k.Name+"| "))
	}

	vm := &kernels.VM{Kernel: k.Vmlinuz(), Initrd: initrd, Append: "quiet", MemoryMB: 1024, CPUs: 2, KVM: kvm}
	accel := map[bool]string{true: "KVM", false: "TCG"}[kvm]
	logf("%s: booting %s %s (%s) under qemu/%s", k.Name, k.Package, k.Version, k.Release, accel)
	t := time.Now()
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	runErr := vm.Run(rctx, console)
	took := since(t)
	if err := logFile.Sync(); err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		return nil, nil, err
	}
	c, perr := kernels.ParseConsole(bytes.NewReader(b))
	problems := c.Problems(expect)
	if perr != nil {
		problems = append(problems, "console: "+perr.Error())
	}
	switch {
	case errors.Is(runErr, kernels.ErrTimeout):
		problems = append(problems, fmt.Sprintf("%v (-timeout %s)", runErr, o.timeout))
	case runErr != nil:
		problems = append(problems, runErr.Error())
	}
	if c.Kernel != "" && c.Kernel != k.Release {
		problems = append(problems, fmt.Sprintf("booted %s, want %s", c.Kernel, k.Release))
	}

	fmt.Printf("\n== %s: %s %s, kernel %s, qemu/%s: boot and tests took %s (console: %s)\n",
		k.Name, k.Package, k.Version, k.Release, accel, took, logPath)
	kernels.PrintTests(os.Stdout, c)
	if len(problems) > 0 {
		kernels.PrintFailures(os.Stdout, c)
		if c.Kernel == "" || len(c.Steps) == 0 {
			fmt.Printf("--- last console lines:\n%s\n", tail(b, 40))
		}
	}
	return c, problems, nil
}

func writeInitramfs(path string, plan *kernels.Plan, files []kernels.InitramfsFile) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := kernels.WriteInitramfs(f, plan, files); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// testArgs are the arguments of test2json that run the test binary bin of
// step with args: its results as JSON lines, which ParseConsole reads.
func testArgs(step, bin string, args ...string) []string {
	return append([]string{"-t", "-p", step, bin, "-test.v=test2json", "-test.count=1"}, args...)
}

// build makes the guest's /init, test2json and the test binaries, static.
// go test -c names each binary after its package: the step names.
func build(ctx context.Context, out string) error {
	goTool := "go"
	if g := os.Getenv("GO"); g != "" {
		goTool = g
	}
	bin := filepath.Join(out, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	flags := []string{"-trimpath", "-ldflags=-s -w"}
	test := append(append([]string{"test", "-c"}, flags...), "-o", bin+"/")
	for _, p := range testPackages {
		test = append(test, p.pkg)
	}
	for _, args := range [][]string{
		append(append([]string{"build"}, flags...), "-o", filepath.Join(out, "init"), "./kernels/init"),
		append(append([]string{"build"}, flags...), "-o", filepath.Join(bin, "test2json"), "cmd/test2json"),
		test,
	} {
		cmd := exec.CommandContext(ctx, goTool, args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w\n%s", goTool, strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// runOnHost runs the presence tests on the host, framed like a guest's
// console so that the same parser reads them.
func runOnHost(ctx context.Context, out string) (*kernels.Console, error) {
	var buf bytes.Buffer
	buf.WriteString(kernels.BootLine(release()) + "\n")
	for _, s := range []struct{ step, test string }{
		{"ebpf", "^TestPresenceMatchesKernel$"},
		{"checks", "^(TestJSONPresence|TestNetlinkPresence)$"},
	} {
		buf.WriteString(kernels.BeginLine(s.step) + "\n")
		t := time.Now()
		bin, err := filepath.Abs(filepath.Join(out, "bin"))
		if err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "test2json"), testArgs(s.step, filepath.Join(bin, s.step+".test"), "-test.run="+s.test)...)
		cmd.Dir = os.TempDir()
		cmd.Stdout, cmd.Stderr = &buf, &buf
		exit := 0
		if err := cmd.Run(); err != nil {
			exit = -1
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				exit = ee.ExitCode()
			}
		}
		buf.WriteString("\n" + kernels.EndLine(s.step, exit, time.Since(t)) + "\n")
	}
	buf.WriteString(kernels.DoneLine() + "\n")
	c, err := kernels.ParseConsole(&buf)
	if err != nil {
		return nil, err
	}
	if p := c.Problems(kernels.Expect{Steps: []string{"ebpf", "checks"}}); len(p) > 0 {
		return c, fmt.Errorf("on the host: %s", strings.Join(p, "; "))
	}
	return c, nil
}

func release() string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(uts.Release[:])
}

func logf(format string, args ...any) {
	fmt.Printf("test-kernels: "+format+"\n", args...)
}

func since(t time.Time) time.Duration { return time.Since(t).Round(100 * time.Millisecond) }

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// prefixWriter writes each line to w with a prefix.
func prefixWriter(w io.Writer, prefix string) io.Writer {
	return &prefixed{w: w, prefix: []byte(prefix), bol: true}
}

type prefixed struct {
	mu     sync.Mutex
	w      io.Writer
	prefix []byte
	bol    bool
}

func (p *prefixed) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []byte
	for _, c := range b {
		if p.bol {
			out = append(out, p.prefix...)
			p.bol = false
		}
		if c == '\r' {
			continue
		}
		out = append(out, c)
		if c == '\n' {
			p.bol = true
		}
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
