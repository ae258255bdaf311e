// Package testutil holds helpers for flowd's privileged tests: they make a
// temporary cgroup, put the test process in it for a while, and skip with a
// clear message when the test cannot run as it must.
package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowd/flowd/cgroup"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("skipping: this test needs root (BPF, cgroups, network namespaces); run 'sudo make test'")
	}
}

// TempCgroup makes a new cgroup below the cgroup2 root and removes it when
// the test ends (after moving any process left in it back to the root).
func TempCgroup(tb testing.TB) string {
	tb.Helper()
	root, err := cgroup.Mount()
	if err != nil {
		tb.Fatalf("finding cgroup2: %v", err)
	}
	dir, err := os.MkdirTemp(root, "flowd-test-")
	if err != nil {
		tb.Fatalf("making test cgroup: %v", err)
	}
	tb.Cleanup(func() { RemoveCgroup(tb, root, dir) })
	return dir
}

// RemoveCgroup moves every process of dir (and its children) to root and removes dir.
func RemoveCgroup(tb testing.TB, root, dir string) {
	tb.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			RemoveCgroup(tb, root, filepath.Join(dir, e.Name()))
		}
	}
	procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, pid := range strings.Fields(string(procs)) {
		_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0)
	}
	var err error
	for i := 0; i < 50; i++ {
		if err = os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	tb.Errorf("removing test cgroup %s: %v", dir, err)
}

var moveMu sync.Mutex

// InCgroup runs fn with the whole test process moved into dir, then moves
// it back to where it was. Sockets created by fn belong to dir (and so do
// connections later accepted on listeners created by fn).
func InCgroup(tb testing.TB, dir string, fn func()) {
	tb.Helper()
	moveMu.Lock()
	defer moveMu.Unlock()
	prev, err := CurrentCgroup()
	if err != nil {
		tb.Fatal(err)
	}
	if err := MoveProcess(dir, os.Getpid()); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		if err := MoveProcess(prev, os.Getpid()); err != nil {
			tb.Error(err)
		}
	}()
	fn()
}

// CurrentCgroup returns the cgroup2 directory the process is in.
func CurrentCgroup() (string, error) {
	root, err := cgroup.Mount()
	if err != nil {
		return "", err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(root, rel), nil
		}
	}
	return "", fmt.Errorf("no cgroup2 entry in /proc/self/cgroup")
}

// MoveProcess writes pid into dir/cgroup.procs.
func MoveProcess(dir string, pid int) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("moving pid %d to %s: %w", pid, dir, err)
	}
	return nil
}
