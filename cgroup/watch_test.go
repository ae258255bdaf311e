package cgroup_test

import (
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/internal/testutil"
)

// TestWatch removes and creates a directory, its parent and a sibling, and
// checks that the watcher calls once per change on the way to its path and
// never for the sibling: inotify delivers the events in order, so when the
// call that sees the last change has come, every earlier one has too.
func TestWatch(t *testing.T) {
	t.Run("tmpfs", func(t *testing.T) { testWatch(t, t.TempDir(), true) })
	t.Run("cgroup2", func(t *testing.T) {
		testutil.RequireRoot(t)
		testWatch(t, testutil.TempCgroup(t), false) // cgroup2 refuses rename(2) (EPERM)
	})
}

func testWatch(t *testing.T, top string, renames bool) {
	parent := filepath.Join(top, "parent")
	path := filepath.Join(parent, "service")
	for _, dir := range []string{parent, path} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu    sync.Mutex
		calls []bool // whether path existed at each call
	)
	w := cgroup.Watch(path, func() {
		_, err := os.Stat(path)
		mu.Lock()
		calls = append(calls, err == nil)
		mu.Unlock()
	})
	defer w.Close()
	if err := w.Polling(); err != nil {
		t.Fatalf("polling, not watching: %v", err)
	}
	testutil.WaitFor(t, "the call at the start", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) == 1
	})
	want := []bool{true}
	step := func(what string, exists bool, ops ...func() error) {
		t.Helper()
		for _, op := range ops {
			if err := op(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		}
		want = append(want, exists)
		testutil.WaitFor(t, what, 5*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(calls) >= len(want) && calls[len(calls)-1] == exists
		})
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(calls, want) {
			t.Fatalf("%s: calls saw the path %v, want %v", what, calls, want)
		}
	}
	mkdir := func(dir string) func() error { return func() error { return os.Mkdir(dir, 0o755) } }
	rmdir := func(dir string) func() error { return func() error { return os.Remove(dir) } }
	sibling := filepath.Join(parent, "other")

	step("the path removed (after a sibling was made)", false, mkdir(sibling), rmdir(path))
	step("the path made again (after the sibling was removed)", true, rmdir(sibling), mkdir(path))
	step("the path removed", false, rmdir(path))
	step("its parent removed", false, rmdir(parent))
	step("its parent made again", false, mkdir(parent))
	step("the path made in the new parent", true, mkdir(path))
	if renames {
		step("the path renamed away", false, func() error { return os.Rename(path, sibling) })
		step("another directory renamed to the path", true, func() error { return os.Rename(sibling, path) })
	}

	if err := w.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	_ = os.Remove(path)
	_ = os.Remove(parent)
}
