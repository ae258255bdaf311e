package netlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
)

// msgBuilder builds the payload of a SOCK_DIAG_BY_FAMILY message the way
// the kernel lays it out.
type msgBuilder struct{ b []byte }

func newMsg(family, state uint8, src netip.AddrPort, dst netip.AddrPort, cookie uint64) *msgBuilder {
	ne := binary.NativeEndian
	b := make([]byte, sizeofInetDiagMsg)
	b[0], b[1] = family, state
	b[2], b[3] = 0xee, 0xee // idiag_timer, idiag_retrans: ignored
	binary.BigEndian.PutUint16(b[4:], src.Port())
	binary.BigEndian.PutUint16(b[6:], dst.Port())
	s, d := src.Addr().AsSlice(), dst.Addr().AsSlice()
	copy(b[8:24], s)
	copy(b[24:40], d)
	ne.PutUint32(b[40:], 7) // idiag_if
	ne.PutUint32(b[44:], uint32(cookie))
	ne.PutUint32(b[48:], uint32(cookie>>32))
	for i := 52; i < sizeofInetDiagMsg; i++ {
		b[i] = 0xdd // expires, queues, uid, inode: ignored
	}
	return &msgBuilder{b: b}
}

// attr appends an attribute and pads it to 4 bytes unless unpadded.
func (m *msgBuilder) attr(typ uint16, data []byte, unpadded bool) *msgBuilder {
	hdr := make([]byte, 4)
	binary.NativeEndian.PutUint16(hdr, uint16(4+len(data)))
	binary.NativeEndian.PutUint16(hdr[2:], typ)
	m.b = append(m.b, hdr...)
	m.b = append(m.b, data...)
	for !unpadded && len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
	return m
}

func u64(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

func TestParseDiagMsg(t *testing.T) {
	v4src := netip.MustParseAddrPort("10.1.2.3:443")
	v4dst := netip.MustParseAddrPort("192.0.2.9:51234")
	v6src := netip.MustParseAddrPort("[2001:db8::1]:8080")
	v6dst := netip.MustParseAddrPort("[::ffff:198.51.100.7]:40000")
	info := bytes.Repeat([]byte{0xab}, 250) // not a multiple of 4
	const cookie = 0x0123456789abcdef

	for _, tc := range []struct {
		name    string
		msg     []byte
		want    diagMsg
		wantErr error
	}{{
		name: "ipv4 with every attribute",
		msg: newMsg(unix.AF_INET, 1, v4src, v4dst, cookie).
			attr(1, make([]byte, 16), false). // INET_DIAG_MEMINFO: not decoded
			attr(inetDiagInfo, info, false).
			attr(inetDiagCong, []byte("cubic\x00"), false).
			attr(14, nil, false). // INET_DIAG_PAD
			attr(inetDiagCgroupID, u64(0x1122334455667788), false).b,
		want: diagMsg{
			family: unix.AF_INET, state: 1, sport: 443, dport: 51234,
			src: [16]byte{10, 1, 2, 3}, dst: [16]byte{192, 0, 2, 9},
			cookie: cookie, info: info, cong: []byte("cubic"),
			cgroupID: 0x1122334455667788, hasCgroupID: true,
		},
	}, {
		name: "ipv6, v4-mapped remote, nested flag, last attribute unpadded",
		msg: newMsg(unix.AF_INET6, 8, v6src, v6dst, 42).
			attr(inetDiagCgroupID|unix.NLA_F_NESTED, u64(99), false).
			attr(inetDiagCong, []byte("bbr\x00"), true).b,
		want: diagMsg{
			family: unix.AF_INET6, state: 8, sport: 8080, dport: 40000,
			src: v6src.Addr().As16(), dst: v6dst.Addr().As16(),
			cookie: 42, cong: []byte("bbr"), cgroupID: 99, hasCgroupID: true,
		},
	}, {
		name: "no attributes: a minisocket",
		msg:  newMsg(unix.AF_INET, 6, v4src, v4dst, 1).b,
		want: diagMsg{
			family: unix.AF_INET, state: 6, sport: 443, dport: 51234,
			src: [16]byte{10, 1, 2, 3}, dst: [16]byte{192, 0, 2, 9}, cookie: 1,
		},
	}, {
		name: "congestion name without NUL, empty tcp_info",
		msg: newMsg(unix.AF_INET, 1, v4src, v4dst, 1).
			attr(inetDiagInfo, []byte{}, false).
			attr(inetDiagCong, []byte("reno"), false).b,
		want: diagMsg{
			family: unix.AF_INET, state: 1, sport: 443, dport: 51234,
			src: [16]byte{10, 1, 2, 3}, dst: [16]byte{192, 0, 2, 9}, cookie: 1,
			info: []byte{}, cong: []byte("reno"),
		},
	}, {
		name:    "shorter than the header",
		msg:     newMsg(unix.AF_INET, 1, v4src, v4dst, 1).b[:sizeofInetDiagMsg-1],
		wantErr: errShortMsg,
	}, {
		name:    "truncated attribute header",
		msg:     append(newMsg(unix.AF_INET, 1, v4src, v4dst, 1).b, 8, 0),
		wantErr: errBadAttr,
	}, {
		name:    "attribute length below its header",
		msg:     append(newMsg(unix.AF_INET, 1, v4src, v4dst, 1).b, 2, 0, 2, 0),
		wantErr: errBadAttr,
	}, {
		name:    "attribute longer than the message",
		msg:     newMsg(unix.AF_INET, 1, v4src, v4dst, 1).attr(inetDiagInfo, info, false).b[:sizeofInetDiagMsg+100],
		wantErr: errBadAttr,
	}, {
		name:    "short cgroup id",
		msg:     newMsg(unix.AF_INET, 1, v4src, v4dst, 1).attr(inetDiagCgroupID, []byte{1, 2, 3, 4}, false).b,
		wantErr: errShortAttr,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var got diagMsg
			got.info = []byte("stale") // parse must reset what the message lacks
			err := parseDiagMsg(tc.msg, &got)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.family != tc.want.family || got.state != tc.want.state ||
				got.sport != tc.want.sport || got.dport != tc.want.dport ||
				got.src != tc.want.src || got.dst != tc.want.dst || got.cookie != tc.want.cookie ||
				got.cgroupID != tc.want.cgroupID || got.hasCgroupID != tc.want.hasCgroupID {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if (got.info == nil) != (tc.want.info == nil) || !bytes.Equal(got.info, tc.want.info) {
				t.Errorf("info = %x, want %x", got.info, tc.want.info)
			}
			if (got.cong == nil) != (tc.want.cong == nil) || !bytes.Equal(got.cong, tc.want.cong) {
				t.Errorf("cong = %q, want %q", got.cong, tc.want.cong)
			}
		})
	}
}

func TestDiagMsgAddrs(t *testing.T) {
	v4 := diagMsg{family: unix.AF_INET, src: [16]byte{127, 0, 0, 1}, dst: [16]byte{10, 0, 0, 2}}
	l, r := v4.addrs()
	if l != netip.MustParseAddr("127.0.0.1") || r != netip.MustParseAddr("10.0.0.2") || !l.Is4() {
		t.Errorf("ipv4: %v %v", l, r)
	}
	mapped := netip.MustParseAddr("::ffff:10.0.0.2")
	v6 := diagMsg{family: unix.AF_INET6, src: netip.IPv6Loopback().As16(), dst: mapped.As16()}
	l, r = v6.addrs()
	if l != netip.IPv6Loopback() || r != mapped || !r.Is4In6() {
		t.Errorf("ipv6: %v %v (v4-mapped addresses must stay 16 bytes)", l, r)
	}
}

func TestDiagRequest(t *testing.T) {
	b := diagRequest(unix.AF_INET6, nil)
	if len(b) != sizeofInetDiagReqV2 {
		t.Fatalf("length %d", len(b))
	}
	if b[0] != unix.AF_INET6 || b[1] != unix.IPPROTO_TCP || b[3] != 0 {
		t.Errorf("family/protocol/pad = %d/%d/%d", b[0], b[1], b[3])
	}
	if want := byte(1<<(inetDiagInfo-1) | 1<<(inetDiagCong-1)); b[2] != want {
		t.Errorf("idiag_ext = %#x, want %#x", b[2], want)
	}
	states := binary.NativeEndian.Uint32(b[4:])
	for s := flow.State(0); s <= flow.StateBoundInactive; s++ {
		want := true
		switch s {
		case 0, flow.StateListen, flow.StateTimeWait, flow.StateNewSynRecv, flow.StateBoundInactive:
			want = false
		}
		if got := states&(1<<s) != 0; got != want {
			t.Errorf("state %s requested = %v, want %v", s, got, want)
		}
	}
	if states>>(flow.StateBoundInactive+1) != 0 {
		t.Errorf("states mask %#x has unknown bits", states)
	}
	if !bytes.Equal(b[8:], make([]byte, sizeofInetDiagReqV2-8)) {
		t.Errorf("socket id is not zero: %x", b[8:])
	}
}

func FuzzParseDiagMsg(f *testing.F) {
	src := netip.MustParseAddrPort("10.1.2.3:443")
	dst := netip.MustParseAddrPort("192.0.2.9:51234")
	f.Add(newMsg(unix.AF_INET, 1, src, dst, 5).
		attr(inetDiagInfo, make([]byte, sizeofTCPInfo), false).
		attr(inetDiagCong, []byte("cubic\x00"), false).
		attr(inetDiagCgroupID, u64(3), false).b)
	f.Add(newMsg(unix.AF_INET6, 1, src, dst, 5).b)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m diagMsg
		if err := parseDiagMsg(b, &m); err != nil {
			return
		}
		for _, s := range [][]byte{m.info, m.cong} {
			if len(s) > len(b) {
				t.Fatalf("attribute of %d bytes in a message of %d", len(s), len(b))
			}
		}
		if bytes.IndexByte(m.cong, 0) >= 0 {
			t.Fatalf("congestion name %q keeps its NUL", m.cong)
		}
		var info flow.TCPInfo
		decodeTCPInfo(&info, m.info)
	})
}

func TestDiagRequestBytecode(t *testing.T) {
	bc := cgroupFilter([]uint64{7})
	b := diagRequest(unix.AF_INET, bc)
	if !bytes.Equal(b[:sizeofInetDiagReqV2], diagRequest(unix.AF_INET, nil)) {
		t.Errorf("the request part changed with a filter")
	}
	attr := b[sizeofInetDiagReqV2:]
	if len(attr) != unix.SizeofNlAttr+len(bc) {
		t.Fatalf("attribute of %d bytes, want %d", len(attr), unix.SizeofNlAttr+len(bc))
	}
	if l, typ := binary.NativeEndian.Uint16(attr), binary.NativeEndian.Uint16(attr[2:]); int(l) != len(attr) || typ != inetDiagReqBytecode {
		t.Errorf("nla_len %d, nla_type %d; want %d, %d", l, typ, len(attr), inetDiagReqBytecode)
	}
	if !bytes.Equal(attr[unix.SizeofNlAttr:], bc) {
		t.Errorf("bytecode %x, want %x", attr[unix.SizeofNlAttr:], bc)
	}
}

// bcAudit checks a filter program as the kernel's inet_diag_bc_audit does
// (net/ipv4/inet_diag.c) for the ops cgroupFilter uses.
func bcAudit(bc []byte) error {
	validTarget := func(cc int) bool { // valid_cc: an op reached by "yes" steps, or the end
		for off := 0; off <= len(bc); {
			if off == cc {
				return true
			}
			if off == len(bc) || off+sizeofBcOp > len(bc) {
				return false
			}
			yes := int(bc[off+1])
			if yes < sizeofBcOp || yes%4 != 0 {
				return false
			}
			off += yes
		}
		return false
	}
	for off := 0; off < len(bc); {
		l := len(bc) - off
		if l < sizeofBcOp {
			return fmt.Errorf("op at %d: truncated", off)
		}
		code, yes, no := bc[off], int(bc[off+1]), int(binary.NativeEndian.Uint16(bc[off+2:]))
		minLen := sizeofBcOp
		switch code {
		case inetDiagBcCgroupCond:
			if l < sizeofBcOp+8 {
				return fmt.Errorf("op at %d: cgroup condition without its id", off)
			}
			minLen += 8
		case inetDiagBcJmp:
		default:
			return fmt.Errorf("op at %d: code %d", off, code)
		}
		if no < minLen || no > l+4 || no%4 != 0 {
			return fmt.Errorf("op at %d: no = %d (%d bytes left)", off, no, l)
		}
		if no < l && !validTarget(off+no) {
			return fmt.Errorf("op at %d: no = %d lands inside an op", off, no)
		}
		if yes < minLen || yes > l+4 || yes%4 != 0 {
			return fmt.Errorf("op at %d: yes = %d (%d bytes left)", off, yes, l)
		}
		off += yes
		if off > len(bc) {
			return fmt.Errorf("yes steps end past the program")
		}
	}
	return nil
}

// bcRun runs a filter program as the kernel's inet_diag_bc_run does, for a
// socket of cgroup id.
func bcRun(bc []byte, id uint64) bool {
	off := 0
	for off < len(bc) {
		code, yes, no := bc[off], int(bc[off+1]), int(binary.NativeEndian.Uint16(bc[off+2:]))
		match := false
		if code == inetDiagBcCgroupCond {
			match = binary.NativeEndian.Uint64(bc[off+sizeofBcOp:]) == id
		}
		if match {
			off += yes
		} else {
			off += no
		}
	}
	return off == len(bc)
}

func TestCgroupFilter(t *testing.T) {
	for _, ids := range [][]uint64{
		{42},
		{3, 9},
		{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25},
		func() []uint64 { // the largest filter: "no" jumps reach past 32 KiB
			ids := make([]uint64, maxFilterCgroups)
			for i := range ids {
				ids[i] = uint64(1000 + 2*i)
			}
			return ids
		}(),
	} {
		bc := cgroupFilter(ids)
		if err := bcAudit(bc); err != nil {
			t.Fatalf("%d ids: the kernel would reject the program: %v", len(ids), err)
		}
		if len(bc)+unix.SizeofNlAttr > 0xffff {
			t.Fatalf("%d ids: %d bytes do not fit one netlink attribute", len(ids), len(bc))
		}
		in := make(map[uint64]bool)
		for _, id := range ids {
			in[id] = true
			if !bcRun(bc, id) {
				t.Errorf("%d ids: cgroup %d rejected", len(ids), id)
			}
		}
		for _, id := range []uint64{0, 1, 2, 41, 43, 999, 1001, 1000 + 2*maxFilterCgroups, ^uint64(0)} {
			if !in[id] && bcRun(bc, id) {
				t.Errorf("%d ids: cgroup %d accepted", len(ids), id)
			}
		}
	}
}
