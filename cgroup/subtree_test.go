package cgroup_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/internal/testutil"
)

func TestMain(m *testing.M) {
	testutil.ChildMain()
	os.Exit(m.Run())
}

// TestSubtreeAndProcesses checks that a subtree's cgroups and processes are
// found below its top, and nothing above it.
func TestSubtreeAndProcesses(t *testing.T) {
	testutil.RequireRoot(t)
	root := testutil.TempCgroup(t)
	child := filepath.Join(root, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	inChild := testutil.StartProcess(t, child)

	ids, err := cgroup.Subtree(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{root, child} {
		id, err := cgroup.ID(dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := ids[id]; !ok {
			t.Errorf("Subtree(%s) lacks %s (id %d)", root, dir, id)
		}
	}
	if len(ids) != 2 {
		t.Errorf("Subtree(%s) has %d cgroups, want 2", root, len(ids))
	}

	pids, err := cgroup.Processes(root)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pids, []int{inChild.Pid}) {
		t.Errorf("Processes(%s) = %v, want [%d]", root, pids, inChild.Pid)
	}
	if _, err := cgroup.Processes(filepath.Join(root, "gone")); err == nil {
		t.Error("Processes of a cgroup that does not exist did not fail")
	}
}
