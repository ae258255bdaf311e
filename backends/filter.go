package backends

import (
	"net/netip"
	"slices"
)

// Filter selects the flows a backend tracks. Empty lists mean "any".
//
// A flow passes the port filter when its local port is in LocalPorts or its
// remote port is in RemotePorts (when neither list is set, any port passes),
// and it passes the address filter when its remote address is inside one of
// RemoteCIDRs (when the list is empty, any address passes). A flow is tracked
// when it passes both. IPv4 prefixes also match IPv4-mapped IPv6 addresses.
type Filter struct {
	LocalPorts  []uint16
	RemotePorts []uint16
	RemoteCIDRs []netip.Prefix
}

// Empty reports whether the filter lets every flow through.
func (f *Filter) Empty() bool {
	return len(f.LocalPorts) == 0 && len(f.RemotePorts) == 0 && len(f.RemoteCIDRs) == 0
}

// Match reports whether a flow with these ports and remote address is tracked.
func (f *Filter) Match(localPort, remotePort uint16, remote netip.Addr) bool {
	if len(f.LocalPorts) > 0 || len(f.RemotePorts) > 0 {
		if !slices.Contains(f.LocalPorts, localPort) && !slices.Contains(f.RemotePorts, remotePort) {
			return false
		}
	}
	if len(f.RemoteCIDRs) == 0 {
		return true
	}
	remote4 := remote.Unmap()
	for _, p := range f.RemoteCIDRs {
		if p.Contains(remote) || p.Contains(remote4) {
			return true
		}
	}
	return false
}

// MappedPrefix returns p as an IPv6 prefix: IPv4 prefixes become
// IPv4-mapped IPv6 prefixes (::ffff:a.b.c.d/96+n). The BPF program keeps all
// CIDRs in one IPv6 LPM trie this way.
func MappedPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), 96+p.Bits())
	}
	return p
}
