package kernels

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParseRealConsole parses the console of a passing run on Debian's 6.1
// (testdata, as qemu wrote it: CRLF line ends, the kernel's power-down line).
func TestParseRealConsole(t *testing.T) {
	b, err := os.ReadFile("testdata/debian-6.1.console.log")
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseConsole(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kernel != "6.1.0-57-cloud-amd64" || !c.Done || len(c.Modules) != 0 || len(c.Errors) != 0 {
		t.Errorf("kernel %q done %v modules %v errors %v", c.Kernel, c.Done, c.Modules, c.Errors)
	}
	var names []string
	for _, s := range c.Steps {
		names = append(names, s.Name)
		if !s.Ended || s.Exit != 0 || s.Duration <= 0 {
			t.Errorf("step %s: ended %v exit %d duration %s", s.Name, s.Ended, s.Exit, s.Duration)
		}
	}
	if want := []string{"ebpf", "netlink", "backends", "checks"}; !slices.Equal(names, want) {
		t.Errorf("steps %v, want %v", names, want)
	}
	if st := c.status("ebpf", "TestTransfer/ipv6"); st != "PASS" {
		t.Errorf("TestTransfer/ipv6: %q", st)
	}
	if st := c.status("backends", "TestBackendsAgree"); st != "PASS" {
		t.Errorf("TestBackendsAgree: %q", st)
	}
	if st := c.status("ebpf", "TestNoSuchTest"); st != "not run" {
		t.Errorf("a test that is not there: %q", st)
	}
	e := Expect{
		Steps:    names,
		Required: map[string][]string{"ebpf": {"TestTransfer/ipv4", "TestModes/transition"}, "checks": {"TestJSONPresence"}},
	}
	if p := c.Problems(e); len(p) != 0 {
		t.Errorf("problems in a passing run: %v", p)
	}

	ebpf, tcpInfo, problems := PresenceOf("debian-6.1", c)
	if len(problems) != 0 {
		t.Errorf("presence problems: %v", problems)
	}
	lacks611 := []string{"rehash", "total_rto", "total_rto_recoveries", "total_rto_time", "received_ce",
		"delivered_e1_bytes", "delivered_e0_bytes", "delivered_ce_bytes", "received_e1_bytes", "received_e0_bytes", "received_ce_bytes"}
	if !ebpf.Known || !slices.Equal(ebpf.Absent, lacks611) {
		t.Errorf("ebpf absent %v (known %v), want %v", ebpf.Absent, ebpf.Known, lacks611)
	}
	if want := append([]string{"rcv_wnd"}, lacks611...); !tcpInfo.Known || !slices.Equal(tcpInfo.Absent, want) {
		t.Errorf("tcp_info absent %v, want %v", tcpInfo.Absent, want)
	}
}

// console builds a guest console from marker lines and test output.
func console(lines ...string) *bytes.Reader {
	return bytes.NewReader([]byte(strings.Join(lines, "\r\n") + "\r\n"))
}

// out is test2json's event for a line test printed; "" is the package's.
func out(test, line string) string {
	b, _ := json.Marshal(event{Action: "output", Test: test, Output: line + "\n"})
	return string(b)
}

// result is test2json's event for the end of test: pass, fail or skip,
// after the line go test prints for it.
func result(action, test string, elapsed float64) string {
	line := fmt.Sprintf("--- %s: %s (%.2fs)", strings.ToUpper(action), test, elapsed)
	if depth := strings.Count(test, "/"); depth > 0 {
		line = strings.Repeat("    ", depth) + line
	}
	b, _ := json.Marshal(event{Action: action, Test: test, Elapsed: elapsed})
	return out(test, line) + "\r\n" + string(b)
}

func run(test string) string {
	b, _ := json.Marshal(event{Action: "run", Test: test})
	return string(b) + "\r\n" + out(test, "=== RUN   "+test)
}

func TestParseConsole(t *testing.T) {
	c, err := ParseConsole(console(
		"SeaBIOS noise",
		BootLine("6.1.0-9-amd64"),
		ModuleLine("/lib/a.ko", nil),
		ModuleLine("/lib/b.ko", errors.New("exec format error")),
		BeginLine("one"),
		run("TestA"),
		out("TestA", "    a_test.go:1: members absent on this kernel: [x y]"),
		result("pass", "TestA", 0.5),
		run("TestB"),
		run("TestB/sub"),
		out("TestB/sub", "    b_test.go:9: boom"),
		// A kernel message sharing the console mid-output.
		"[   12.345678] random: crng init done",
		result("fail", "TestB/sub", 1.25),
		result("fail", "TestB", 1.25),
		run("TestC"),
		out("TestC", "    c_test.go:3: skipping: this test needs root"),
		result("skip", "TestC", 0),
		out("", "FAIL"),
		EndLine("one", 1, 1750*time.Millisecond),
		BeginLine("two"),
		run("TestD"),
		"[   13.000000] BUG: soft lockup - CPU#0 stuck for 26s!",
	))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kernel != "6.1.0-9-amd64" || c.Done {
		t.Errorf("kernel %q, done %v", c.Kernel, c.Done)
	}
	if len(c.Modules) != 1 || !strings.Contains(c.Modules[0], "/lib/b.ko failed: exec format error") {
		t.Errorf("module failures: %q", c.Modules)
	}
	if len(c.Steps) != 2 {
		t.Fatalf("%d steps", len(c.Steps))
	}
	one, two := c.Steps[0], c.Steps[1]
	if !one.Ended || one.Exit != 1 || one.Duration != 1750*time.Millisecond {
		t.Errorf("step one: %+v", one)
	}
	if two.Ended {
		t.Errorf("step two ended")
	}
	var got []string
	for _, r := range one.Tests {
		got = append(got, r.Name+" "+r.Status+" "+r.Duration.String())
	}
	want := []string{"TestA PASS 500ms", "TestB/sub FAIL 1.25s", "TestB FAIL 1.25s", "TestC SKIP 0s"}
	if !slices.Equal(got, want) {
		t.Errorf("tests %q, want %q", got, want)
	}
	if got := one.Tests[1].Output; len(got) != 1 || !strings.Contains(got[0], "boom") {
		t.Errorf("TestB/sub output %q", got)
	}
	if d := one.Tests[1].Depth(); d != 1 {
		t.Errorf("depth of a subtest %d", d)
	}
	if !slices.Equal(one.Absent["on this kernel"], []string{"x", "y"}) {
		t.Errorf("absent %v", one.Absent)
	}

	problems := strings.Join(c.Problems(Expect{
		Steps:     []string{"one", "two", "three"},
		Required:  map[string][]string{"one": {"TestA", "TestZ"}},
		AllowSkip: regexp.MustCompile(`^TestNothing$`),
	}), "\n")
	for _, want := range []string{
		"module /lib/b.ko failed",
		"step one exited with status 1",
		"one: TestB/sub failed",
		"one: TestB failed",
		"one: TestC skipped: c_test.go:3: skipping: this test needs root",
		"one: required check TestZ: not run",
		"step two never ended",
		"step two passed no test",
		"step three never started",
		"the guest did not reach the end of its plan",
	} {
		if !strings.Contains(problems, want) {
			t.Errorf("problems lack %q:\n%s", want, problems)
		}
	}
	if strings.Contains(problems, "TestA") {
		t.Errorf("a passing required test is a problem:\n%s", problems)
	}
}

func TestProblemsOfSilence(t *testing.T) {
	for name, in := range map[string]string{
		"nothing":        "",
		"no init":        "Kernel panic - not syncing: No working init found\n",
		"setup failed":   BootLine("6.1") + "\n" + ErrorLine("setting up the guest", errors.New("mounting bpf: ENODEV")) + "\n" + DoneLine() + "\n",
		"zero tests ran": BootLine("6.1") + "\n" + BeginLine("s") + "\n" + out("", "testing: warning: no tests to run") + "\n" + out("", "PASS") + "\n" + EndLine("s", 0, time.Second) + "\n" + DoneLine() + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			c, err := ParseConsole(strings.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			if p := c.Problems(Expect{Steps: []string{"s"}}); len(p) == 0 {
				t.Error("no problem found")
			}
		})
	}
}

func TestProblemsFiltered(t *testing.T) {
	c, err := ParseConsole(console(
		BootLine("6.1"),
		BeginLine("a"), run("TestA"), result("pass", "TestA", 0.1), EndLine("a", 0, time.Second),
		BeginLine("b"), out("", "testing: warning: no tests to run"), EndLine("b", 0, time.Second),
		DoneLine(),
	))
	if err != nil {
		t.Fatal(err)
	}
	e := Expect{Steps: []string{"a", "b"}, Required: map[string][]string{"a": {"TestZ"}}}
	if p := c.Problems(e); len(p) != 2 {
		t.Errorf("unfiltered: problems %q, want step b passed none and TestZ not run", p)
	}
	e.Filtered = true
	if p := c.Problems(e); len(p) != 0 {
		t.Errorf("filtered: problems %q", p)
	}
	c.Steps[0].Tests = nil
	if p := c.Problems(e); len(p) != 1 || p[0] != "no test passed" {
		t.Errorf("filtered, nothing passed: problems %q", p)
	}
}

func TestParseConsoleErrors(t *testing.T) {
	for name, in := range map[string]string{
		"end of another step": BeginLine("a") + "\n" + EndLine("b", 0, time.Second) + "\n",
		"end without begin":   EndLine("a", 0, time.Second) + "\n",
		"bad exit":            BeginLine("a") + "\n@@flowd-guest end a exit=x duration=1s\n",
		"bad duration":        BeginLine("a") + "\n@@flowd-guest end a exit=0 duration=soon\n",
		"missing fields":      BeginLine("a") + "\n@@flowd-guest end a\n",
	} {
		if _, err := ParseConsole(strings.NewReader(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestMarkersRoundTrip(t *testing.T) {
	for _, exit := range []int{0, 1, 2, -1} {
		line := EndLine("ebpf", exit, 1234567*time.Microsecond)
		step, e, d, err := parseEnd(strings.TrimPrefix(line, markerEnd+" "))
		if err != nil || step != "ebpf" || e != exit || d != 1235*time.Millisecond {
			t.Errorf("%q: %q %d %s %v", line, step, e, d, err)
		}
	}
}
