package cgroup_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/internal/testutil"
)

// TestResolve: a relative cgroup is relative to the cgroup2 mount, never to
// the working directory; an absolute one stays as it is.
func TestResolve(t *testing.T) {
	testutil.RequireRoot(t)
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir := testutil.TempCgroup(t)
	rel, err := filepath.Rel(mount, dir)
	if err != nil {
		t.Fatal(err)
	}
	// A directory of the same name in the working directory is not it.
	wd := t.TempDir()
	if err := os.Mkdir(filepath.Join(wd, rel), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(wd)
	for in, want := range map[string]string{"": mount, rel: dir, rel + "/": dir, "./" + rel: dir, dir: dir} {
		if got, err := cgroup.Resolve(in); err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := cgroup.Resolve(filepath.Join(wd, rel)); err == nil || !strings.Contains(err.Error(), "not on a cgroup2 file system") {
		t.Errorf("Resolve of a directory outside cgroup2: %v", err)
	}
	missing := rel + "/missing.service"
	if _, err := cgroup.Resolve(missing); err == nil || !strings.Contains(err.Error(), filepath.Join(mount, missing)+" does not exist") {
		t.Errorf("Resolve(%q) = %v, want an error naming %s", missing, err, filepath.Join(mount, missing))
	}
}
