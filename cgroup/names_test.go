package cgroup_test

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// clock is a time that tests move on by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// testNames returns the Names of a new temporary cgroup, on a clock the
// test moves on by hand, with the cgroup's directory and path.
func testNames(t *testing.T) (names *cgroup.Names, c *clock, root, rel string) {
	t.Helper()
	testutil.RequireRoot(t)
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	root = testutil.TempCgroup(t)
	if rel, err = filepath.Rel(mount, root); err != nil {
		t.Fatal(err)
	}
	names = cgroup.NewNames(mount, root)
	c = &clock{t: time.Now()}
	names.SetClock(c.now)
	return names, c, root, rel
}

// mkdir makes cgroup dir and returns its id.
func mkdir(t *testing.T, dir string) uint64 {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	id, err := cgroup.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func rmdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
}

// TestNamesUnknownWalkOnce: an id that no walk can find (a cgroup made and
// removed before any walk saw it, one outside the subtree) costs one walk
// at most, not one a second; a cgroup made later is still found.
func TestNamesUnknownWalkOnce(t *testing.T) {
	names, c, root, rel := testNames(t)

	short := mkdir(t, filepath.Join(root, "short"))
	rmdir(t, filepath.Join(root, "short"))
	outside, err := cgroup.ID(filepath.Dir(root)) // the parent
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		for _, id := range []uint64{short, outside} {
			if got, ok := names.Path(id); ok {
				t.Fatalf("Path(%d) = %q, want unknown", id, got)
			}
		}
		if got := names.Walks(); got != 1 {
			t.Fatalf("after %d s of unknown ids: %d walks, want 1", i, got)
		}
		c.advance(2 * cgroup.DefaultMinRewalk)
	}

	// A cgroup made since is found by the next walk; within
	// DefaultMinRewalk of it, one made later still waits for its turn.
	late := mkdir(t, filepath.Join(root, "late"))
	if got, ok := names.Path(late); !ok || got != rel+"/late" {
		t.Errorf("Path(late) = %q, %v; want %q", got, ok, rel+"/late")
	}
	later := mkdir(t, filepath.Join(root, "later"))
	if got, ok := names.Path(later); ok {
		t.Errorf("Path(a cgroup made after the last walk, within a second) = %q, want unknown until the next walk", got)
	}
	c.advance(cgroup.DefaultMinRewalk)
	if got, ok := names.Path(later); !ok || got != rel+"/later" {
		t.Errorf("Path(later) = %q, %v; want %q", got, ok, rel+"/later")
	}
	if got := names.Walks(); got != 3 {
		t.Errorf("%d walks, want 3", got)
	}
}

// TestNamesForgetRemoved: a removed cgroup keeps its path while it is
// asked for at least once every KeepRemoved; one that is not is
// forgotten (unknown, never wrong), so that cgroup churn does not grow
// what Names holds.
func TestNamesForgetRemoved(t *testing.T) {
	names, c, root, rel := testNames(t)

	kept := mkdir(t, filepath.Join(root, "kept"))
	gone := mkdir(t, filepath.Join(root, "gone"))
	for _, id := range []uint64{kept, gone} {
		if _, ok := names.Path(id); !ok {
			t.Fatalf("Path(%d) unknown", id)
		}
	}
	rmdir(t, filepath.Join(root, "kept"))
	rmdir(t, filepath.Join(root, "gone"))

	// Cgroups come and go, each asked for once while it lives (what makes
	// Names walk); kept's flow has a record every half KeepRemoved.
	var churn []uint64
	for i := range 8 {
		c.advance(cgroup.KeepRemoved / 2)
		if got, ok := names.Path(kept); !ok || got != rel+"/kept" {
			t.Fatalf("after %v: Path(kept, removed, still asked for) = %q, %v; want %q", time.Duration(i+1)*cgroup.KeepRemoved/2, got, ok, rel+"/kept")
		}
		dir := filepath.Join(root, "churn")
		id := mkdir(t, dir)
		if _, ok := names.Path(id); !ok {
			t.Fatalf("Path(churn %d) unknown", i)
		}
		rmdir(t, dir)
		churn = append(churn, id)
	}
	walks := names.Walks()
	for _, id := range append([]uint64{gone}, churn[:4]...) {
		if got, ok := names.Path(id); ok {
			t.Errorf("Path(%d, removed, not asked for since) = %q, want forgotten", id, got)
		}
	}
	if got := names.Walks(); got != walks {
		t.Errorf("asking for forgotten cgroups walked %d times, want none", got-walks)
	}
	// The subtree's root and kept, and the churn of the last two
	// KeepRemoved at most.
	if got := names.Held(); got > 2+4 {
		t.Errorf("Names holds %d paths after churn, want at most 6", got)
	}
}

// TestNamesConcurrent asks for known and unknown ids from several
// goroutines while walks run (run with -race): every answer is the
// cgroup's path or unknown, never another's.
func TestNamesConcurrent(t *testing.T) {
	names, _, root, rel := testNames(t)
	var tick atomic.Int64 // each reading of the clock is a second later: a walk whenever one may run
	names.SetClock(func() time.Time { return time.Unix(tick.Add(1), 0) })
	want := map[uint64]string{}
	for _, name := range []string{"a", "b", "c", "d"} {
		want[mkdir(t, filepath.Join(root, name))] = rel + "/" + name
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				for id, path := range want {
					if got, ok := names.Path(id); ok && got != path {
						t.Errorf("Path(%d) = %q, want %q", id, got, path)
					}
				}
				names.Path(uint64(1<<40 + 4*i + g)) // unknown, newer than any asked before: walks
			}
		})
	}
	wg.Wait()
	for id, path := range want {
		if got, ok := names.Path(id); !ok || got != path {
			t.Errorf("Path(%d) = %q, %v; want %q", id, got, ok, path)
		}
	}
}
