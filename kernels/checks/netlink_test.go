package checks_test

import (
	"testing"
	"time"

	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// TestNetlinkPresence checks that the netlink backend reports exactly the
// members of the running kernel's own tcp_info: those within the length
// getsockopt(TCP_INFO) returns, and no member that is newer than the kernel.
func TestNetlinkPresence(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, err := netlink.New(netlink.Config{Cgroup: cg, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	col := testutil.Run(t, b)
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 256<<10)
	n := testutil.TCPInfoLen(t, p.Client)
	testutil.WaitFor(t, "a netlink sample", 5*time.Second, func() bool {
		return len(col.Find(cookie, flow.EventSample)) > 0
	})
	r := col.Find(cookie, flow.EventSample)[0]

	var absent []string
	for f := flow.Field(0); f < flow.NumFields; f++ {
		want := testutil.InTCPInfo(f, n)
		if r.Info.Has(f) != want {
			t.Errorf("%s: present = %v, but the kernel's tcp_info is %d bytes long", f, r.Info.Has(f), n)
		}
		if !want {
			absent = append(absent, f.Name())
		}
	}
	t.Logf("tcp_info is %d bytes", n)
	t.Logf("members absent from the kernel's tcp_info: %v", absent)
}
