package testutil

import (
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netns is a network namespace made by a test, with its loopback up.
type Netns struct {
	handle netns.NsHandle
	// Path opens the namespace (for setns or a netlink.Config.Netns).
	Path string
}

// NewNetns makes a network namespace that lives until the test ends.
func NewNetns(tb testing.TB) *Netns {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatalf("getting current netns: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New() // unshares this thread into the new namespace
	if err != nil {
		tb.Fatalf("making netns: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			tb.Fatalf("returning to the original netns: %v", err)
		}
	}()
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		ns.Close()
		tb.Fatalf("bringing lo up in the new netns: %v", err)
	}
	n := &Netns{handle: ns, Path: fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns))}
	tb.Cleanup(n.Close)
	return n
}

// Close lets the test's hold on the namespace go: it lives on as long as
// processes or sockets are in it. Path no longer opens it. Close may be
// called more than once.
func (n *Netns) Close() {
	if n.handle.IsOpen() {
		n.handle.Close()
	}
}

// Do runs fn on a thread inside the namespace: sockets fn creates belong to it.
func (n *Netns) Do(tb testing.TB, fn func()) {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatalf("getting current netns: %v", err)
	}
	defer orig.Close()
	if err := netns.Set(n.handle); err != nil {
		tb.Fatalf("entering netns: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			tb.Fatalf("returning to the original netns: %v", err)
		}
	}()
	fn()
}
