package ebpf

import (
	"slices"
	"testing"

	"github.com/flowd/flowd/internal/testutil"
)

// TestUnreadAndPrograms: the ring buffer's unread bytes grow while nobody
// reads it; Programs names every program, the sockops one among them; both
// are empty once the backend is closed.
func TestUnreadAndPrograms(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	const size = 1 << 16
	b, err := New(Config{Cgroup: cg, Interval: 0, RingbufSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if unread, got := b.Unread(); unread != 0 || got != size {
		t.Errorf("Unread before traffic = %d, %d; want 0, %d", unread, got, size)
	}
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	p.Send(t, 1<<20)
	if unread, _ := b.Unread(); unread == 0 {
		t.Error("nothing unread in a ring buffer nobody reads, after a transfer")
	}
	progs, err := b.Programs()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range progs {
		names = append(names, p.Name)
	}
	if !slices.Contains(names, "flowd_sockops") || slices.Contains(names, "") {
		t.Errorf("Programs = %+v, want flowd_sockops among them, every one named", progs)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if unread, got := b.Unread(); unread != 0 || got != 0 {
		t.Errorf("Unread after Close = %d, %d", unread, got)
	}
	if progs, err := b.Programs(); progs != nil || err != nil {
		t.Errorf("Programs after Close = %v, %v", progs, err)
	}
}
