package netlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
)

// Wire format of inet_diag (include/uapi/linux/inet_diag.h).
const (
	sizeofInetDiagReqV2 = 56 // struct inet_diag_req_v2
	sizeofInetDiagMsg   = 72 // struct inet_diag_msg

	inetDiagInfo     = 2  // INET_DIAG_INFO: struct tcp_info
	inetDiagCong     = 4  // INET_DIAG_CONG: congestion control name, NUL-terminated
	inetDiagCgroupID = 21 // INET_DIAG_CGROUP_ID: u64 cgroup v2 id of the socket
)

// In-kernel filtering: a filter program sent with the dump request
// (INET_DIAG_REQ_BYTECODE), which the kernel runs on each socket before it
// fills in tcp_info and copies the socket out.
const (
	inetDiagReqBytecode  = 1  // INET_DIAG_REQ_BYTECODE
	inetDiagBcJmp        = 1  // INET_DIAG_BC_JMP: always takes its "no" branch
	inetDiagBcCgroupCond = 13 // INET_DIAG_BC_CGROUP_COND (Linux 5.9): followed by a u64 cgroup v2 id

	sizeofBcOp = 4 // struct inet_diag_bc_op: u8 code, u8 yes, u16 no
)

// maxFilterCgroups is the most cgroups an in-kernel filter lists: 16 bytes
// each, in one netlink attribute of at most 64 KiB. A larger subtree is
// filtered in user space only.
const maxFilterCgroups = 2048

// cgroupFilter returns an inet_diag filter program that accepts a socket
// exactly when its cgroup id is one of ids (at most maxFilterCgroups).
//
// The kernel runs it from the first op: an op whose condition holds moves
// on by its "yes" length, otherwise by its "no" length, and the socket is
// accepted when that lands exactly on the end. Each id gets a CGROUP_COND
// (on a match: the JMP right after it; otherwise: the next CGROUP_COND)
// and a JMP to the end; a last JMP jumps 4 bytes past the end: no id
// matched. The kernel's check of the program (inet_diag_bc_audit) wants
// every op reachable by "yes" steps from the first, and every "no" to land
// on one of them or on the end (or 4 bytes past it).
func cgroupFilter(ids []uint64) []byte {
	const pair = 16 // CGROUP_COND with its id, then JMP
	b := make([]byte, pair*len(ids)+sizeofBcOp)
	for i, id := range ids {
		op := b[pair*i:]
		putBcOp(op, inetDiagBcCgroupCond, 12, pair)
		binary.NativeEndian.PutUint64(op[sizeofBcOp:], id)
		putBcOp(op[12:], inetDiagBcJmp, sizeofBcOp, uint16(len(b)-pair*i-12))
	}
	putBcOp(b[pair*len(ids):], inetDiagBcJmp, sizeofBcOp, 2*sizeofBcOp)
	return b
}

func putBcOp(b []byte, code, yes uint8, no uint16) {
	b[0], b[1] = code, yes
	binary.NativeEndian.PutUint16(b[2:], no)
}

// diagExt asks for the attributes flowd decodes: bit n-1 requests attribute
// n. INET_DIAG_CGROUP_ID needs no bit: the kernel always sends it when it
// is built with CONFIG_SOCK_CGROUP_DATA.
const diagExt = 1<<(inetDiagInfo-1) | 1<<(inetDiagCong-1)

// diagStates is the idiag_states mask of the dump: every state of a full
// TCP socket except LISTEN (a listener is not a flow). TIME_WAIT and
// NEW_SYN_RECV are left out because they are minisockets without tcp_info,
// and BOUND_INACTIVE because a socket that is only bound has no peer.
const diagStates = 1<<flow.StateEstablished |
	1<<flow.StateSynSent |
	1<<flow.StateSynRecv |
	1<<flow.StateFinWait1 |
	1<<flow.StateFinWait2 |
	1<<flow.StateClose |
	1<<flow.StateCloseWait |
	1<<flow.StateLastAck |
	1<<flow.StateClosing

// maxDumpAttempts is how often a dump the kernel flags as interrupted
// (NLM_F_DUMP_INTR: the socket tables changed under it) is tried in all.
const maxDumpAttempts = 4

// recvTimeout bounds the wait for the kernel's next reply datagram.
const recvTimeout = 10 * time.Second

// diagRequest returns the struct inet_diag_req_v2 that dumps the TCP
// sockets of one address family, followed by the filter program bytecode
// as an INET_DIAG_REQ_BYTECODE attribute when there is one.
func diagRequest(family uint8, bytecode []byte) []byte {
	b := make([]byte, sizeofInetDiagReqV2, sizeofInetDiagReqV2+unix.SizeofNlAttr+len(bytecode))
	b[0] = family                                    // sdiag_family
	b[1] = unix.IPPROTO_TCP                          // sdiag_protocol
	b[2] = diagExt                                   // idiag_ext
	binary.NativeEndian.PutUint32(b[4:], diagStates) // idiag_states
	// The zero socket id matches every socket.
	if bytecode != nil {
		b = binary.NativeEndian.AppendUint16(b, uint16(unix.SizeofNlAttr+len(bytecode))) // nla_len
		b = binary.NativeEndian.AppendUint16(b, inetDiagReqBytecode)                     // nla_type
		b = append(b, bytecode...)                                                       // a multiple of 4: no padding
	}
	return b
}

// diagFilter is an in-kernel filter of the dump requests: the cgroups it
// accepts (sorted, at most maxFilterCgroups) and its program. The dumpers
// of every namespace share one.
type diagFilter struct {
	cgroups  []uint64
	bytecode []byte
}

func newDiagFilter(cgroups []uint64) *diagFilter {
	return &diagFilter{cgroups: slices.Clone(cgroups), bytecode: cgroupFilter(cgroups)}
}

// dumper dumps the TCP sockets of one network namespace over one
// NETLINK_SOCK_DIAG socket opened in it, which it keeps open between dumps.
type dumper struct {
	netns   netnsID
	sock    *nl.NetlinkSocket
	reqs    [2]familyRequest
	log     logrus.FieldLogger
	msgs    [][]byte    // payloads of the last dump, reused
	kfilter *diagFilter // the requests' filter; nil: none
	skipped int         // dumps skipped in a row because they were interrupted

	// execute runs one dump request, calling collect with the payload of
	// each reply message: (*nl.NetlinkRequest).ExecuteIter, but for tests.
	execute func(req *nl.NetlinkRequest, collect func([]byte) bool) error
}

// familyRequest is the dump request of one address family.
type familyRequest struct {
	family string // "IPv4" or "IPv6", for messages
	af     uint8  // AF_INET or AF_INET6
	req    *nl.NetlinkRequest
}

// newDumper returns a dumper of namespace id that uses sock, a netlink
// socket opened in id; the dumper closes it.
func newDumper(log logrus.FieldLogger, sock *nl.NetlinkSocket, id netnsID) (*dumper, error) {
	tv := unix.NsecToTimeval(recvTimeout.Nanoseconds())
	if err := sock.SetReceiveTimeout(&tv); err != nil {
		sock.Close()
		return nil, fmt.Errorf("setting netlink receive timeout: %w", err)
	}
	// With Sockets set, ExecuteIter uses this socket (and its sequence
	// numbers) instead of opening a new one per request.
	handles := map[int]*nl.SocketHandle{unix.NETLINK_SOCK_DIAG: {Socket: sock}}
	newReq := func(family uint8) *nl.NetlinkRequest {
		req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
		req.AddRawData(diagRequest(family, nil))
		req.Sockets = handles
		return req
	}
	return &dumper{
		netns: id,
		sock:  sock,
		reqs: [2]familyRequest{
			{family: "IPv4", af: unix.AF_INET, req: newReq(unix.AF_INET)},
			{family: "IPv6", af: unix.AF_INET6, req: newReq(unix.AF_INET6)},
		},
		log: log,
		execute: func(req *nl.NetlinkRequest, collect func([]byte) bool) error {
			return req.ExecuteIter(unix.NETLINK_SOCK_DIAG, nl.SOCK_DIAG_BY_FAMILY, collect)
		},
	}, nil
}

// filter makes the kernel return only the sockets f accepts from the next
// dump on; nil: every socket.
func (d *dumper) filter(f *diagFilter) {
	if f == d.kfilter {
		return
	}
	var bytecode []byte
	if f != nil {
		bytecode = f.bytecode
	}
	for _, r := range d.reqs {
		r.req.RawData = diagRequest(r.af, bytecode)
	}
	d.kfilter = f
}

// close closes the netlink socket. It also ends a dump in progress.
func (d *dumper) close() {
	if d.sock != nil {
		d.sock.Close()
	}
}

// dump returns the payload of every inet_diag_msg of one IPv4 and one IPv6
// dump. The slices stay valid until the next call. A dump the kernel flags
// as interrupted (NLM_F_DUMP_INTR) is repeated; if it still is after
// maxDumpAttempts, dump returns an error that wraps nl.ErrDumpInterrupted.
func (d *dumper) dump() ([][]byte, error) {
	clear(d.msgs) // let the previous dump's buffers go
	d.msgs = d.msgs[:0]
	for _, r := range d.reqs {
		if err := d.dumpFamily(r); err != nil {
			return nil, err
		}
	}
	return d.msgs, nil
}

func (d *dumper) dumpFamily(r familyRequest) error {
	start := len(d.msgs)
	collect := func(m []byte) bool {
		d.msgs = append(d.msgs, m)
		return true
	}
	var err error
	for attempt := 1; ; attempt++ {
		d.msgs = d.msgs[:start]
		err = d.execute(r.req, collect)
		if !errors.Is(err, nl.ErrDumpInterrupted) || attempt == maxDumpAttempts {
			break
		}
		d.log.WithFields(logrus.Fields{logKeyFamily: r.family, logKeyAttempt: attempt}).
			Debug("inet_diag dump interrupted by concurrent changes, retrying")
	}
	if err != nil {
		d.msgs = d.msgs[:start]
		return fmt.Errorf("dumping %s TCP sockets: %w", r.family, err)
	}
	return nil
}

// diagMsg is one parsed inet_diag_msg. Its slices point into the netlink
// message it was parsed from.
type diagMsg struct {
	family      uint8 // AF_INET or AF_INET6
	state       uint8 // idiag_state
	sport       uint16
	dport       uint16
	src         [16]byte // IPv4 addresses fill the first 4 bytes
	dst         [16]byte
	cookie      uint64
	info        []byte // INET_DIAG_INFO, nil when absent
	cong        []byte // INET_DIAG_CONG without its NUL, nil when absent
	cgroupID    uint64
	hasCgroupID bool
}

// addrs returns m's local and remote addresses: 4-byte addresses for an
// IPv4 socket, the 16 bytes unchanged (v4-mapped or not) for an IPv6 one.
func (m *diagMsg) addrs() (local, remote netip.Addr) {
	if m.family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(m.src[:4])), netip.AddrFrom4([4]byte(m.dst[:4]))
	}
	return netip.AddrFrom16(m.src), netip.AddrFrom16(m.dst)
}

var (
	errShortMsg  = errors.New("inet_diag message shorter than its header")
	errBadAttr   = errors.New("malformed netlink attribute")
	errShortAttr = errors.New("INET_DIAG_CGROUP_ID attribute shorter than 8 bytes")
)

// parseDiagMsg parses b, the payload of one SOCK_DIAG_BY_FAMILY message,
// into m. It does not allocate.
func parseDiagMsg(b []byte, m *diagMsg) error {
	if len(b) < sizeofInetDiagMsg {
		return errShortMsg
	}
	ne := binary.NativeEndian
	*m = diagMsg{
		family: b[0],
		state:  b[1],
		// struct inet_diag_sockid starts at 4.
		sport: binary.BigEndian.Uint16(b[4:]),
		dport: binary.BigEndian.Uint16(b[6:]),
		src:   [16]byte(b[8:24]),
		dst:   [16]byte(b[24:40]),
		// idiag_if at 40, then idiag_cookie[2], the low half first.
		cookie: uint64(ne.Uint32(b[44:])) | uint64(ne.Uint32(b[48:]))<<32,
	}
	for a := b[sizeofInetDiagMsg:]; len(a) > 0; {
		if len(a) < unix.NLA_HDRLEN {
			return errBadAttr
		}
		n := int(ne.Uint16(a))
		if n < unix.NLA_HDRLEN || n > len(a) {
			return errBadAttr
		}
		data := a[unix.NLA_HDRLEN:n]
		switch ne.Uint16(a[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER) {
		case inetDiagInfo:
			m.info = data
		case inetDiagCong:
			if i := bytes.IndexByte(data, 0); i >= 0 {
				data = data[:i]
			}
			m.cong = data
		case inetDiagCgroupID:
			if len(data) < 8 {
				return errShortAttr
			}
			m.cgroupID = ne.Uint64(data)
			m.hasCgroupID = true
		}
		next := (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if next >= len(a) {
			break
		}
		a = a[next:]
	}
	return nil
}
