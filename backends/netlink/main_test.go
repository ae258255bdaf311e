package netlink

import (
	"os"
	"testing"

	"github.com/flowd/flowd/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.ChildMain()
	os.Exit(m.Run())
}
