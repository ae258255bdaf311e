package ebpf

import (
	"context"
	"testing"
	"time"

	"github.com/flowd/flowd/internal/testutil"
)

// startBackend loads the backend and runs it until the test ends.
func startBackend(t *testing.T, cfg Config) (*Backend, *testutil.Collector) {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	col := &testutil.Collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, col) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b, col
}
