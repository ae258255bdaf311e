package ebpf

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// waitOpen waits for the open record of cookie and returns it.
func waitOpen(t *testing.T, col *testutil.Collector, cookie uint64) flow.Record {
	t.Helper()
	testutil.WaitFor(t, "the open record", 5*time.Second, func() bool {
		return len(col.Find(cookie, flow.EventOpen)) > 0
	})
	return col.Find(cookie, flow.EventOpen)[0]
}

// closeAndWait closes both ends of p and waits for the close record of
// cookie, which it returns.
func closeAndWait(t *testing.T, col *testutil.Collector, p testutil.Pair, cookie uint64) flow.Record {
	t.Helper()
	p.Client.Close()
	testutil.ReadEOF(t, p.Server)
	p.Server.Close()
	testutil.WaitFor(t, "the close record", 5*time.Second, func() bool {
		return len(col.Find(cookie, flow.EventClose)) > 0
	})
	return col.Find(cookie, flow.EventClose)[0]
}

// TestCgroupRemovedAndCreatedAgain removes the cgroup under a live
// connection, as systemd does when it restarts a unit, then creates it
// again: the connection that outlives its cgroup is recorded to its close,
// the removal is logged once and shown by CgroupState, the link of the
// removed cgroup is closed once the kernel detached it, and a connection in
// the new cgroup is recorded with its new cgroup id. Then once more, with
// a connection established in the new cgroup before the backend looks
// (the watcher's call comes late): the walk of the new subtree finds it.
func TestCgroupRemovedAndCreatedAgain(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	log, hook := logtest.NewNullLogger()
	b, col := startBackend(t, Config{Cgroup: cg, Interval: 50 * time.Millisecond, FlushInterval: 20 * time.Millisecond, Log: log})
	ln := testutil.Listen(t, "", "tcp4", "127.0.0.1:0") // outside: the clients alone are the cgroup's
	removed := func(removals uint64) {
		t.Helper()
		if err := os.Remove(cg); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, "the backend to find the cgroup removed", 5*time.Second, func() bool {
			return !b.CgroupState().Attached
		})
		if w := testutil.Warnings(hook); len(w) != int(removals) || !strings.Contains(w[len(w)-1], "cgroup removed") {
			t.Errorf("warnings %q, want one per removal, saying the cgroup was removed", w)
		}
		if st := b.CgroupState(); st.Removals != removals || st.Path != cg {
			t.Errorf("CgroupState() = %+v, want %d removals of %s", st, removals, cg)
		}
	}
	created := func() uint64 {
		t.Helper()
		if err := os.Mkdir(cg, 0o755); err != nil {
			t.Fatal(err)
		}
		id, err := cgroup.ID(cg)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	attached := func(id uint64) {
		t.Helper()
		testutil.WaitFor(t, "the backend to attach to the new cgroup", 5*time.Second, func() bool {
			return b.CgroupState().Attached
		})
		if st := b.CgroupState(); st.ID != id {
			t.Errorf("CgroupState() = %+v, want attached to the new cgroup %d", st, id)
		}
	}

	old := testutil.Dial(t, cg, ln)
	oldCookie := testutil.Cookie(t, old.Client)
	oldID, err := cgroup.ID(cg)
	if err != nil {
		t.Fatal(err)
	}
	if r := waitOpen(t, col, oldCookie); r.CgroupID != oldID {
		t.Fatalf("open record in cgroup %d, want %d", r.CgroupID, oldID)
	}
	removed(1)
	if st := b.CgroupState(); st.ID != oldID {
		t.Errorf("CgroupState() = %+v, want the removed cgroup's id %d", st, oldID)
	}

	// The connection outlives its cgroup: it is still sampled, and closed.
	removedAt := time.Now()
	old.Send(t, 1<<20)
	testutil.WaitFor(t, "a sample of the transfer after the removal", 5*time.Second, func() bool {
		for _, r := range col.Find(oldCookie, flow.EventSample) {
			if acked, _ := r.Info.Get(flow.FieldBytesAcked); r.Time.After(removedAt) && acked > 1<<20 {
				return true
			}
		}
		return false
	})
	if r := closeAndWait(t, col, old, oldCookie); r.CgroupID != oldID {
		t.Errorf("close record in cgroup %d, want %d", r.CgroupID, oldID)
	}
	for _, r := range col.Records(oldCookie) {
		if r.CgroupID != 0 && r.CgroupID != oldID {
			t.Errorf("a record of the old cgroup's flow says cgroup %d: %+v", r.CgroupID, r)
		}
	}
	// Its last socket gone, the kernel detaches the removed cgroup's link.
	testutil.WaitFor(t, "the removed cgroup's link closed", 5*time.Second, func() bool {
		b.linksMu.Lock()
		defer b.linksMu.Unlock()
		return len(b.removed) == 0
	})

	newID := created()
	attached(newID)
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	if r := waitOpen(t, col, cookie); r.CgroupID != newID || r.Existing {
		t.Errorf("open record in the new cgroup: cgroup %d, existing %v; want %d, false", r.CgroupID, r.Existing, newID)
	}
	p.Send(t, 1<<20)
	if r := closeAndWait(t, col, p, cookie); r.CgroupID != newID {
		t.Errorf("close record in cgroup %d, want %d", r.CgroupID, newID)
	}

	removed(2)
	if err := b.watch.Close(); err != nil { // the backend does not see the creation
		t.Fatal(err)
	}
	lateID := created()
	late := testutil.Dial(t, cg, ln)
	lateCookie := testutil.Cookie(t, late.Client)
	b.cgroupChanged() // what the watcher would have done
	attached(lateID)
	if r := waitOpen(t, col, lateCookie); r.CgroupID != lateID || !r.Existing {
		t.Errorf("open record of the flow found by the walk: cgroup %d, existing %v; want %d, true", r.CgroupID, r.Existing, lateID)
	}
	late.Send(t, 1<<20)
	closeAndWait(t, col, late, lateCookie)
	if w := testutil.Warnings(hook); len(w) != 2 {
		t.Errorf("warnings %q, want the two removals'", w)
	}
}

// TestCgroupRemovedStops: with StopWhenRemoved, Run returns an error naming
// the removed cgroup, and nothing stays attached.
func TestCgroupRemovedStops(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, err := New(Config{Cgroup: cg, FlushInterval: 20 * time.Millisecond, StopWhenRemoved: true})
	if err != nil {
		t.Fatal(err)
	}
	_, returned := testutil.RunToEnd(t, b, 5*time.Second)
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	if err := returned(); !errors.Is(err, backends.ErrCgroupRemoved) || !strings.Contains(err.Error(), cg) {
		t.Errorf("Run = %v, want an error wrapping ErrCgroupRemoved that names %s", err, cg)
	}
	b.linksMu.Lock()
	defer b.linksMu.Unlock()
	if !b.detached || len(b.removed) > 0 {
		t.Errorf("after Run: detached %v, %d links of removed cgroups left", b.detached, len(b.removed))
	}
}
