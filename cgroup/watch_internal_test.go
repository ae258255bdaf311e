package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

// TestWatchPolls: without inotify, the watcher says why and calls every
// PollInterval.
func TestWatchPolls(t *testing.T) {
	path := filepath.Join(t.TempDir(), "service")
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	limit := errors.New("too many open files")
	var calls atomic.Int32
	w := watch(path, func() { calls.Add(1) }, func() (*fsnotify.Watcher, error) { return nil, limit })
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := w.Polling(); !errors.Is(err, limit) {
		t.Errorf("Polling() = %v, want %v", err, limit)
	}
	deadline := time.Now().Add(5 * PollInterval)
	for calls.Load() < 2 { // the call at the start, and one a PollInterval later
		if time.Now().After(deadline) {
			t.Fatalf("%d calls in %s", calls.Load(), 5*PollInterval)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
