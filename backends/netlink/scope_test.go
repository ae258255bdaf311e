package netlink

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/flowd/flowd/cgroup"
)

// TestScope runs the scope over a plain directory tree: cgroup.Subtree
// only walks directories and reads their inode numbers.
func TestScope(t *testing.T) {
	root := t.TempDir()
	id := func(dir string) uint64 {
		t.Helper()
		v, err := cgroup.ID(dir)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	mkdir := func(dir string) uint64 {
		t.Helper()
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		return id(dir)
	}
	a := mkdir(filepath.Join(root, "a"))
	deep := mkdir(filepath.Join(root, "a", "deep"))
	outsideID := id(t.TempDir())

	s := newScope(root, false)
	s.newDump()
	check := func(id uint64, want bool) {
		t.Helper()
		got, err := s.contains(id)
		if err != nil || got != want {
			t.Errorf("contains(%d) = %v, %v; want %v", id, got, err, want)
		}
	}
	check(id(root), true)
	check(a, true)
	check(deep, true)

	// An id the walk of this dump did not find could belong to a cgroup
	// made after the walk: it is out for now, and decided next dump.
	check(outsideID, false)
	if _, ok := s.outside[outsideID]; ok {
		t.Errorf("an id unknown to an earlier walk was cached as outside")
	}
	s.newDump()
	check(outsideID, false)
	if _, ok := s.outside[outsideID]; !ok {
		t.Errorf("an id outside the subtree is not cached")
	}
	if !s.walked {
		t.Errorf("the unknown id did not cause a walk")
	}
	s.newDump()
	check(outsideID, false)
	check(a, true)
	if s.walked {
		t.Errorf("the subtree was walked again for ids it knows")
	}

	// A new cgroup is found by the walk its first socket causes.
	b := mkdir(filepath.Join(root, "b"))
	s.newDump()
	check(b, true)
	if !s.walked {
		t.Errorf("the new cgroup's id did not cause a walk")
	}

	// The cache of outside ids is bounded.
	for i := range uint64(2 * maxOutside) {
		s.newDump()
		check(1<<40+i, false)
	}
	if len(s.outside) > maxOutside {
		t.Errorf("%d outside ids cached, at most %d", len(s.outside), maxOutside)
	}

	// A root scope takes in every id without walking anything.
	all := newScope(filepath.Join(root, "no-such-dir"), true)
	if in, err := all.contains(outsideID); !in || err != nil {
		t.Errorf("root scope: contains = %v, %v", in, err)
	}

	// A removed (or missing) cgroup holds nothing until it is created
	// again.
	gone := newScope(filepath.Join(root, "no-such-dir"), false)
	gone.newDump()
	if in, err := gone.contains(a); in || err != nil {
		t.Errorf("a missing cgroup: contains = %v, %v; want false, nil", in, err)
	}
}
