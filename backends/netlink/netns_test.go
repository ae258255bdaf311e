package netlink

import (
	"net"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// TestNetns checks that Config.Netns dumps the sockets of another network
// namespace, and that without it they are not seen.
func TestNetns(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	ns := testutil.NewNetns(t)

	var ln net.Listener
	var p testutil.Pair
	ns.Do(t, func() {
		ln = testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
		p = testutil.Dial(t, cg, ln)
	})
	cookie := testutil.Cookie(t, p.Client)

	inside, err := New(Config{Cgroup: cg, Interval: 20 * time.Millisecond, Netns: ns.Path})
	if err != nil {
		t.Fatal(err)
	}
	outside, err := New(Config{Cgroup: cg, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	in, out := testutil.Run(t, inside), testutil.Run(t, outside)
	p.Send(t, 256<<10)
	testutil.WaitFor(t, "the flow in the namespace", 5*time.Second, func() bool {
		return len(in.Find(cookie, flow.EventSample)) > 0
	})
	if n := len(out.Records(cookie)); n != 0 {
		t.Fatalf("a backend without Netns saw %d records of a flow in another namespace", n)
	}
	if _, err := New(Config{Cgroup: cg, Interval: time.Second, Netns: "/nonexistent/netns"}); err == nil {
		t.Fatal("a nonexistent netns path was accepted")
	}
}
