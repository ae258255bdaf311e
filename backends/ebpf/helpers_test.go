package ebpf

import (
	"os"
	"testing"

	"github.com/flowd/flowd/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.ChildMain()
	os.Exit(m.Run())
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
