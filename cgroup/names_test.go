package cgroup_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/internal/testutil"
)

func TestNames(t *testing.T) {
	testutil.RequireRoot(t)
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	root := testutil.TempCgroup(t)
	child := filepath.Join(root, "child")
	if err := os.Mkdir(child, 0o755); err != nil {
		t.Fatal(err)
	}
	names := cgroup.NewNames(mount, root)
	rel, _ := filepath.Rel(mount, root)
	for _, tc := range []struct{ dir, want string }{{root, rel}, {child, rel + "/child"}} {
		id, err := cgroup.ID(tc.dir)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := names.Path(id); !ok || got != tc.want {
			t.Errorf("Path(%d) = %q, %v; want %q", id, got, ok, tc.want)
		}
	}

	// A cgroup made after the first walk is found by a later one, once
	// MinRewalk has passed; until then it is unknown, not wrong.
	late := filepath.Join(child, "late")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := cgroup.ID(late)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the late cgroup's name", 3*cgroup.DefaultMinRewalk, func() bool {
		got, ok := names.Path(id)
		if ok && got != rel+"/child/late" {
			t.Fatalf("Path(late) = %q, want %q", got, rel+"/child/late")
		}
		return ok
	})

	// A removed cgroup keeps its name: its flows may outlive it.
	if err := os.Remove(late); err != nil {
		t.Fatal(err)
	}
	if got, ok := names.Path(id); !ok || got != rel+"/child/late" {
		t.Errorf("Path(removed) = %q, %v; want its last path", got, ok)
	}

	// Outside the subtree: unknown.
	mountID, err := cgroup.ID(mount)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := names.Path(mountID); ok {
		t.Errorf("Path(the root, outside the subtree) = %q, want unknown", got)
	}
	// The whole hierarchy: the root is "/".
	if got, ok := cgroup.NewNames(mount, mount).Path(mountID); !ok || got != "/" {
		t.Errorf("Path(root) with the whole hierarchy = %q, %v; want \"/\"", got, ok)
	}
}
