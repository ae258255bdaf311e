package testutil

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link is two network namespaces made by a test, joined by a veth pair:
// A at 192.0.2.1 and B at 192.0.2.2 (RFC 5737 addresses, which exist only
// there).
type Link struct {
	A, B         *Netns
	AddrA, AddrB netip.Addr
	devA, devB   string
}

// NewLink makes the namespaces and the link between them; they go when the
// test ends.
func NewLink(tb testing.TB) *Link {
	tb.Helper()
	l := &Link{A: NewNetns(tb), B: NewNetns(tb),
		AddrA: netip.MustParseAddr("192.0.2.1"), AddrB: netip.MustParseAddr("192.0.2.2"), devA: "veth-a", devB: "veth-b"}
	ha := l.A.netlink(tb)
	hb := l.B.netlink(tb)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.devA}, PeerName: l.devB,
		PeerNamespace: netlink.NsFd(int(l.B.handle))}
	if err := ha.LinkAdd(veth); err != nil {
		tb.Fatalf("making a veth pair: %v", err)
	}
	for _, end := range []struct {
		h    *netlink.Handle
		dev  string
		addr netip.Addr
	}{{ha, l.devA, l.AddrA}, {hb, l.devB, l.AddrB}} {
		link, err := end.h.LinkByName(end.dev)
		if err == nil {
			err = end.h.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: end.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}})
		}
		if err == nil {
			err = end.h.LinkSetUp(link)
		}
		if err != nil {
			tb.Fatalf("setting up %s: %v", end.dev, err)
		}
	}
	return l
}

// Shape puts a tbf qdisc on the end of the link in from (l.A or l.B):
// what that end sends goes at most rate bytes/s, with burst bytes of
// tokens and a queue of limit bytes (beyond which tbf drops).
func (l *Link) Shape(tb testing.TB, from *Netns, rate uint64, burst, limit uint32) {
	tb.Helper()
	dev := l.devA
	if from == l.B {
		dev = l.devB
	}
	h := from.netlink(tb)
	link, err := h.LinkByName(dev)
	if err != nil {
		tb.Fatal(err)
	}
	tbf := &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT},
		Rate:       rate, Limit: limit, Buffer: netlink.Xmittime(rate, burst),
	}
	if err := h.QdiscAdd(tbf); err != nil {
		tb.Fatalf("adding tbf to %s: %v", dev, err)
	}
}

// netlink returns a route netlink handle that works in the namespace,
// closed when the test ends. Only NETLINK_ROUTE: a handle of every family
// fails where one is not built (xfrm on Debian's 6.1 cloud kernel).
func (n *Netns) netlink(tb testing.TB) *netlink.Handle {
	tb.Helper()
	h, err := netlink.NewHandleAt(n.handle, unix.NETLINK_ROUTE)
	if err != nil {
		tb.Fatalf("netlink handle in a test netns: %v", err)
	}
	tb.Cleanup(h.Close)
	return h
}
