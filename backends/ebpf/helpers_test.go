package ebpf

import (
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/flowd/flowd/internal/testutil"
)

// holdEnv makes the test binary a process that only waits for its
// standard input to close (holdProcess).
const holdEnv = "FLOWD_TEST_HOLD"

func TestMain(m *testing.M) {
	if os.Getenv(holdEnv) != "" {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// holdProcess starts a process in cgroup cg that lives until the test ends,
// in the network namespace of the calling thread (the test binary itself:
// the kernel matrix's guests have no other programs).
func holdProcess(t *testing.T, cg string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), holdEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: mustOpen(t, cg)}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting a process in %s: %v", cg, err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
}

// startBackend loads the backend and runs it until the test ends.
func startBackend(t *testing.T, cfg Config) (*Backend, *testutil.Collector) {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return b, testutil.Run(t, b)
}
