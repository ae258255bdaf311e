package netlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
)

// Wire format of inet_diag (include/uapi/linux/inet_diag.h).
const (
	sizeofInetDiagReqV2 = 56 // struct inet_diag_req_v2
	sizeofInetDiagMsg   = 72 // struct inet_diag_msg

	inetDiagInfo     = 2  // INET_DIAG_INFO: struct tcp_info
	inetDiagCong     = 4  // INET_DIAG_CONG: congestion control name, NUL-terminated
	inetDiagCgroupID = 21 // INET_DIAG_CGROUP_ID: u64 cgroup v2 id of the socket
)

// diagExt asks for the attributes flowd decodes: bit n-1 requests attribute
// n. INET_DIAG_CGROUP_ID needs no bit: the kernel always sends it when it
// is built with CONFIG_SOCK_CGROUP_DATA.
const diagExt = 1<<(inetDiagInfo-1) | 1<<(inetDiagCong-1)

// diagStates is the idiag_states mask of the dump: every state of a full
// TCP socket except LISTEN (a listener is not a flow). TIME_WAIT and
// NEW_SYN_RECV are left out because they are minisockets without tcp_info,
// and BOUND_INACTIVE because a socket that is only bound has no peer.
const diagStates = 1<<backends.StateEstablished |
	1<<backends.StateSynSent |
	1<<backends.StateSynRecv |
	1<<backends.StateFinWait1 |
	1<<backends.StateFinWait2 |
	1<<backends.StateClose |
	1<<backends.StateCloseWait |
	1<<backends.StateLastAck |
	1<<backends.StateClosing

// maxDumpAttempts is how often a dump the kernel flags as interrupted
// (NLM_F_DUMP_INTR: the socket tables changed under it) is tried in all.
const maxDumpAttempts = 4

// recvTimeout bounds the wait for the kernel's next reply datagram.
const recvTimeout = 10 * time.Second

// diagRequest returns the struct inet_diag_req_v2 that dumps the TCP
// sockets of one address family.
func diagRequest(family uint8) []byte {
	b := make([]byte, sizeofInetDiagReqV2)
	b[0] = family                                    // sdiag_family
	b[1] = unix.IPPROTO_TCP                          // sdiag_protocol
	b[2] = diagExt                                   // idiag_ext
	binary.NativeEndian.PutUint32(b[4:], diagStates) // idiag_states
	// The zero socket id matches every socket.
	return b
}

// dumper dumps the kernel's TCP sockets over one NETLINK_SOCK_DIAG socket
// that it keeps open between dumps.
type dumper struct {
	sock *nl.NetlinkSocket
	reqs [2]familyRequest
	log  logrus.FieldLogger
	msgs [][]byte // payloads of the last dump, reused

	// execute runs one dump request, calling collect with the payload of
	// each reply message: (*nl.NetlinkRequest).ExecuteIter, but for tests.
	execute func(req *nl.NetlinkRequest, collect func([]byte) bool) error
}

// familyRequest is the dump request of one address family.
type familyRequest struct {
	family string // "IPv4" or "IPv6", for messages
	req    *nl.NetlinkRequest
}

func newDumper(log logrus.FieldLogger, netnsPath string) (*dumper, error) {
	sock, err := openDiagSocket(netnsPath)
	if err != nil {
		return nil, err
	}
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
		req.AddRawData(diagRequest(family))
		req.Sockets = handles
		return req
	}
	return &dumper{
		sock: sock,
		reqs: [2]familyRequest{
			{family: "IPv4", req: newReq(unix.AF_INET)},
			{family: "IPv6", req: newReq(unix.AF_INET6)},
		},
		log: log,
		execute: func(req *nl.NetlinkRequest, collect func([]byte) bool) error {
			return req.ExecuteIter(unix.NETLINK_SOCK_DIAG, nl.SOCK_DIAG_BY_FAMILY, collect)
		},
	}, nil
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

// openDiagSocket opens a NETLINK_SOCK_DIAG socket in the network namespace
// at netnsPath, or in flowd's own when it is "". inet_diag only reports the
// sockets of the namespace its netlink socket was created in.
func openDiagSocket(netnsPath string) (*nl.NetlinkSocket, error) {
	if netnsPath == "" {
		sock, err := nl.Subscribe(unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return nil, fmt.Errorf("opening sock_diag netlink socket: %w", err)
		}
		return sock, nil
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", netnsPath, err)
	}
	defer ns.Close()
	sock, err := nl.SubscribeAt(ns, netns.None(), unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening sock_diag netlink socket in %s: %w", netnsPath, err)
	}
	return sock, nil
}
