// Package validation runs real iperf3 flows between two network namespaces
// while flowd's ebpf and netlink backends record them, and checks that the
// three agree. Its test binary is ./test (make test-binary).
package validation

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// Shaping is an optional tbf bottleneck on the sender's side of the link.
type Shaping struct {
	Rate  string // e.g. "50mbit"
	Burst string // e.g. "16kb"
	Limit int    // bytes of queue before tbf drops
}

func (s *Shaping) String() string {
	if s == nil {
		return "unshaped"
	}
	return fmt.Sprintf("tbf rate %s burst %s limit %d", s.Rate, s.Burst, s.Limit)
}

// Topology is two network namespaces, "a" (the iperf3 client) and "b"
// (the server), joined by a veth pair. Its addresses exist only there.
type Topology struct {
	NSA, NSB       string
	DevA, DevB     string
	AddrA, AddrB   netip.Addr
	created        []string
	createdNetnses []string
}

// Addresses inside the test's own namespaces (RFC 5737 / RFC 3849 ranges).
var (
	v4A = netip.MustParseAddr("192.0.2.1")
	v4B = netip.MustParseAddr("192.0.2.2")
	v6A = netip.MustParseAddr("2001:db8:f10d::1")
	v6B = netip.MustParseAddr("2001:db8:f10d::2")
)

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewTopology builds the namespaces and the link. shape, when not nil, is
// put on the egress of sender ("a" or "b"). Close removes everything.
func NewTopology(id string, ipv6 bool, shape *Shaping, sender string) (t *Topology, err error) {
	t = &Topology{
		NSA: "flowd-" + id + "-a", NSB: "flowd-" + id + "-b",
		DevA: "fd" + id + "a", DevB: "fd" + id + "b",
		AddrA: v4A, AddrB: v4B,
	}
	if ipv6 {
		t.AddrA, t.AddrB = v6A, v6B
	}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	for _, ns := range []string{t.NSA, t.NSB} {
		if err := run("ip", "netns", "add", ns); err != nil {
			return nil, err
		}
		t.createdNetnses = append(t.createdNetnses, ns)
	}
	prefix := "/24"
	if ipv6 {
		prefix = "/64"
	}
	steps := [][]string{
		{"ip", "link", "add", t.DevA, "netns", t.NSA, "type", "veth", "peer", "name", t.DevB, "netns", t.NSB},
		{"ip", "-n", t.NSA, "link", "set", "lo", "up"},
		{"ip", "-n", t.NSB, "link", "set", "lo", "up"},
		{"ip", "-n", t.NSA, "addr", "add", t.AddrA.String() + prefix, "dev", t.DevA, "nodad"},
		{"ip", "-n", t.NSB, "addr", "add", t.AddrB.String() + prefix, "dev", t.DevB, "nodad"},
		{"ip", "-n", t.NSA, "link", "set", t.DevA, "up"},
		{"ip", "-n", t.NSB, "link", "set", t.DevB, "up"},
	}
	if !ipv6 {
		// nodad is IPv6 only.
		steps[3] = steps[3][:len(steps[3])-1]
		steps[4] = steps[4][:len(steps[4])-1]
	}
	if shape != nil {
		ns, dev := t.NSA, t.DevA
		if sender == "b" {
			ns, dev = t.NSB, t.DevB
		}
		steps = append(steps, []string{"ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
			"tbf", "rate", shape.Rate, "burst", shape.Burst, "limit", fmt.Sprint(shape.Limit)})
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// NetnsPath returns the file that opens namespace ns.
func NetnsPath(ns string) string { return "/run/netns/" + ns }

// Close removes the namespaces (which removes the veth pair and qdiscs).
func (t *Topology) Close() error {
	var errs []string
	for _, ns := range t.createdNetnses {
		if err := run("ip", "netns", "del", ns); err != nil {
			errs = append(errs, err.Error())
		}
	}
	t.createdNetnses = nil
	if len(errs) > 0 {
		return fmt.Errorf("removing test namespaces: %s", strings.Join(errs, "; "))
	}
	return nil
}

// haveTools reports what the validation needs and is missing.
func haveTools() error {
	var missing []string
	for _, tool := range []string{"ip", "tc", "iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing tools: %s (make test-deps installs them)", strings.Join(missing, ", "))
	}
	if _, err := os.Stat("/run"); err != nil {
		return fmt.Errorf("no /run for network namespace files: %w", err)
	}
	return nil
}
