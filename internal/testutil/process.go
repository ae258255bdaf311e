package testutil

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv marks a copy of a test binary started by StartProcess, and
// dialEnv one started by StartDialer, with the address it connects to.
const (
	childEnv = "FLOWD_TESTUTIL_CHILD"
	dialEnv  = "FLOWD_TESTUTIL_DIAL"
)

// DialerComm is the name a process started by StartDialer gives itself.
const DialerComm = "flowd-dialer"

// ChildMain returns at once, unless this test binary is a copy started by
// StartProcess or StartDialer: then it waits until its standard input is
// closed and exits. A package whose tests call them calls it first thing
// in TestMain.
func ChildMain() {
	if os.Getenv(childEnv) == "" {
		return
	}
	var conn net.Conn
	if addr := os.Getenv(dialEnv); addr != "" {
		// The process's own name, which its main thread holds: whichever
		// thread writes it.
		if err := os.WriteFile("/proc/self/comm", []byte(DialerComm), 0); err != nil {
			fmt.Fprintf(os.Stderr, "naming the dialer: %v\n", err)
			os.Exit(1)
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "dialer: %v\n", err)
			os.Exit(1)
		}
		conn = c
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	if conn != nil {
		conn.Close()
	}
	os.Exit(0)
}

// Process is a process a test started that does nothing until stopped.
type Process struct {
	Pid   int
	cmd   *exec.Cmd
	stdin io.Closer
}

// StartProcess starts a copy of the test binary that does nothing, inside
// cgroup cg from its first instruction, in the network namespace of the
// calling thread: called in Netns.Do, it lives in that namespace. It is
// stopped when the test ends, if it was not before. The test binary's
// TestMain must call ChildMain.
func StartProcess(tb testing.TB, cg string) *Process {
	tb.Helper()
	return startChild(tb, cg)
}

// StartDialer starts a copy of the test binary as StartProcess does, which
// names itself DialerComm and connects to addr; it closes the connection
// and exits when stopped.
func StartDialer(tb testing.TB, cg, addr string) *Process {
	tb.Helper()
	return startChild(tb, cg, dialEnv+"="+addr)
}

// startChild starts a copy of the test binary in cgroup cg with the
// environment variables env besides childEnv.
func startChild(tb testing.TB, cg string, env ...string) *Process {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("finding the test binary: %v", err)
	}
	dir, err := unix.Open(cg, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		tb.Fatalf("opening cgroup %s: %v", cg, err)
	}
	defer unix.Close(dir)
	cmd := exec.Command(exe, "-test.run=^$") // runs no test should ChildMain be missing
	cmd.Env = append([]string{childEnv + "=1"}, env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// clone3(CLONE_INTO_CGROUP), Linux 5.7: never a moment outside cg.
	// Should the test binary die, the pipe closes and the process exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: dir}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting a process in cgroup %s: %v", cg, err)
	}
	p := &Process{Pid: cmd.Process.Pid, cmd: cmd, stdin: stdin}
	tb.Cleanup(func() { p.Stop(tb) })
	return p
}

// Stop ends the process and waits until it is gone. It may be called more
// than once.
func (p *Process) Stop(tb testing.TB) {
	tb.Helper()
	if p.cmd.ProcessState != nil {
		return
	}
	p.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			tb.Errorf("process %d: %v", p.Pid, err)
		}
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		tb.Errorf("process %d did not exit when its standard input was closed", p.Pid)
	}
}
