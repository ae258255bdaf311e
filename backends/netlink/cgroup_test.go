package netlink

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

// waitEvent waits for a record of cookie with event ev and returns the first.
func waitEvent(t *testing.T, col *testutil.Collector, cookie uint64, ev flow.Event) flow.Record {
	t.Helper()
	testutil.WaitFor(t, "the "+ev.String()+" record", waitTimeout, func() bool {
		return len(col.Find(cookie, ev)) > 0
	})
	return col.Find(cookie, ev)[0]
}

// TestCgroupRemovedAndCreatedAgain removes the cgroup under a live
// connection, as systemd does when it restarts a unit, then creates it
// again: the connection that outlives its cgroup is dumped to its close,
// the removal is logged once and shown by CgroupState, and a connection in
// the new cgroup is recorded with its new cgroup id. With the namespaces
// found from the cgroup's processes, and with one pinned namespace.
func TestCgroupRemovedAndCreatedAgain(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct{ name, netns string }{{"scanned", ""}, {"pinned", "/proc/self/ns/net"}} {
		t.Run(tc.name, func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			log, hook := logtest.NewNullLogger()
			b, err := New(Config{Cgroup: cg, Interval: 50 * time.Millisecond, Netns: tc.netns, Log: log})
			if err != nil {
				t.Fatal(err)
			}
			col := testutil.Run(t, b)
			ln := testutil.Listen(t, "", "tcp4", "127.0.0.1:0") // outside: the clients alone are the cgroup's

			old := testutil.Dial(t, cg, ln)
			oldCookie := testutil.Cookie(t, old.Client)
			oldID, err := cgroup.ID(cg)
			if err != nil {
				t.Fatal(err)
			}
			if r := waitEvent(t, col, oldCookie, flow.EventOpen); r.CgroupID != oldID {
				t.Fatalf("open record in cgroup %d, want %d", r.CgroupID, oldID)
			}

			if err := os.Remove(cg); err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, "the backend to find the cgroup removed", waitTimeout, func() bool {
				return !b.CgroupState().Attached
			})
			if st := b.CgroupState(); st.ID != oldID || st.Removals != 1 {
				t.Errorf("CgroupState() = %+v, want the removed cgroup %d, 1 removal", st, oldID)
			}
			if w := testutil.Warnings(hook); len(w) != 1 || !strings.Contains(w[0], "cgroup removed") {
				t.Errorf("warnings %q, want one saying the cgroup was removed", w)
			}

			// The connection outlives its cgroup: still dumped, then closed.
			removedAt := time.Now()
			old.Send(t, 1<<20)
			testutil.WaitFor(t, "a sample of the transfer after the removal", waitTimeout, func() bool {
				for _, r := range col.Find(oldCookie, flow.EventSample) {
					if acked, _ := r.Info.Get(flow.FieldBytesAcked); r.Time.After(removedAt) && acked > 1<<20 {
						return true
					}
				}
				return false
			})
			old.Client.Close()
			old.Server.Close()
			if r := waitEvent(t, col, oldCookie, flow.EventClose); r.CgroupID != oldID {
				t.Errorf("close record in cgroup %d, want %d", r.CgroupID, oldID)
			}

			if err := os.Mkdir(cg, 0o755); err != nil {
				t.Fatal(err)
			}
			newID, err := cgroup.ID(cg)
			if err != nil {
				t.Fatal(err)
			}
			testutil.WaitFor(t, "the backend to find the new cgroup", waitTimeout, func() bool {
				return b.CgroupState().Attached
			})
			if st := b.CgroupState(); st.ID != newID || st.ID == oldID || st.Removals != 1 {
				t.Errorf("CgroupState() = %+v, want the new cgroup %d, 1 removal", st, newID)
			}
			p := testutil.Dial(t, cg, ln)
			cookie := testutil.Cookie(t, p.Client)
			if r := waitEvent(t, col, cookie, flow.EventOpen); r.CgroupID != newID {
				t.Errorf("open record in cgroup %d, want the new cgroup's %d", r.CgroupID, newID)
			}
			p.Client.Close()
			p.Server.Close()
			if r := waitEvent(t, col, cookie, flow.EventClose); r.CgroupID != newID {
				t.Errorf("close record in cgroup %d, want %d", r.CgroupID, newID)
			}
			if w := testutil.Warnings(hook); len(w) != 1 {
				t.Errorf("warnings %q, want only the removal's", w)
			}
		})
	}
}

// TestCgroupRemovedStops: with StopWhenRemoved, Run returns an error naming
// the removed cgroup after the dump that found it removed, which records
// the close of a flow gone by then; a flow still open gets no close record,
// as when Run is stopped.
func TestCgroupRemovedStops(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, err := New(Config{Cgroup: cg, Interval: 50 * time.Millisecond, StopWhenRemoved: true})
	if err != nil {
		t.Fatal(err)
	}
	col, returned := testutil.RunToEnd(t, b, waitTimeout)
	ln := testutil.Listen(t, "", "tcp4", "127.0.0.1:0")
	open, gone := testutil.Dial(t, cg, ln), testutil.Dial(t, cg, ln)
	openCookie, goneCookie := testutil.Cookie(t, open.Client), testutil.Cookie(t, gone.Client)
	waitEvent(t, col, openCookie, flow.EventOpen)
	waitEvent(t, col, goneCookie, flow.EventOpen)
	gone.Client.Close()
	gone.Server.Close()
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	if err := returned(); !errors.Is(err, backends.ErrCgroupRemoved) || !strings.Contains(err.Error(), cg) {
		t.Errorf("Run = %v, want an error wrapping ErrCgroupRemoved that names %s", err, cg)
	}
	if n := len(col.Find(goneCookie, flow.EventClose)); n != 1 {
		t.Errorf("%d close records of the flow closed before the removal, want 1", n)
	}
	if n := len(col.Find(openCookie, flow.EventClose)); n != 0 {
		t.Errorf("%d close records of the flow still open, want 0", n)
	}
	if st := b.CgroupState(); st.Attached || st.Removals != 1 {
		t.Errorf("CgroupState() = %+v, want removed once", st)
	}
}
