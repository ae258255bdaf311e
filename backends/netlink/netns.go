package netlink

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/cgroup"
)

// netnsID identifies a network namespace: the device and inode of its
// nsfs file, the same through every path that opens it.
type netnsID struct{ dev, ino uint64 }

func statNetns(path string) (netnsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return netnsID{}, err
	}
	return netnsID{st.Dev, st.Ino}, nil
}

func fstatNetns(h netns.NsHandle) (netnsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return netnsID{}, err
	}
	return netnsID{st.Dev, st.Ino}, nil
}

func procNetnsPath(pid int) string { return "/proc/" + strconv.Itoa(pid) + "/ns/net" }

// recheckEvery is how many scans pass before the namespace of a known
// process is read again: a process can enter another namespace (setns,
// unshare) without changing its pid, and re-reading every process at
// every scan would cost a stat each.
const recheckEvery = 16

// netnsScanner finds the network namespaces in which the processes of a
// cgroup subtree live, from their /proc/PID/ns/net. It remembers each
// process's namespace, so that a scan reads the namespace of new processes
// only, plus once more on the scan after a process was first seen (a
// process that forks and then enters a namespace, as `ip netns exec` does)
// and every recheckEvery scans.
type netnsScanner struct {
	root   string // the subtree's top cgroup
	all    bool   // root is the cgroup2 root: every process of the host, listed by /proc
	scans  uint64 // scans made, counting from 1
	pids   map[int]pidNetns
	found  map[netnsID]int // from the last scan: each namespace and one of its processes
	denied int             // processes of the last scan whose namespace could not be read
	buf    []byte          // a cgroup.procs file, reused

	statPid func(pid int) (netnsID, error) // the namespace of a process: statNetns of its file, but for tests
}

// pidNetns is what a scanner knows about one process.
type pidNetns struct {
	netns netnsID
	known bool   // netns was read (false: permission denied)
	first uint64 // the scan that first saw the process
	seen  uint64 // the last scan that saw it
}

func newNetnsScanner(root string, all bool) *netnsScanner {
	return &netnsScanner{
		root:  root,
		all:   all,
		pids:  make(map[int]pidNetns),
		found: make(map[netnsID]int),
		buf:   make([]byte, 4096),
		statPid: func(pid int) (netnsID, error) {
			return statNetns(procNetnsPath(pid))
		},
	}
}

// scan lists the processes of the subtree and returns the namespaces they
// live in, each with one of its processes, and the ids of the subtree's
// cgroups (nil for the cgroup2 root, none while the subtree's root is
// removed), which it walked for their cgroup.procs. The first map is the scanner's and is valid until the next
// scan.
func (s *netnsScanner) scan() (found map[netnsID]int, inside map[uint64]struct{}, err error) {
	s.scans++
	clear(s.found)
	s.denied = 0
	if s.all {
		err = s.listProc()
	} else if inside, err = s.walk(); cgroup.IsRemoved(err) {
		inside, err = map[uint64]struct{}{}, nil // the root cgroup is removed: no process is in it
	}
	if err != nil {
		return nil, nil, err
	}
	for pid, p := range s.pids {
		if p.seen != s.scans {
			delete(s.pids, pid)
		}
	}
	return s.found, inside, nil
}

// listProc visits every process of the host.
func (s *netnsScanner) listProc() error {
	f, err := os.Open("/proc")
	if err != nil {
		return fmt.Errorf("listing processes: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("listing processes: %w", err)
	}
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		if pid, err := strconv.Atoi(n); err == nil {
			s.visit(pid)
		}
	}
	return nil
}

// walk visits the processes of every cgroup of the subtree and returns the
// cgroups' ids.
func (s *netnsScanner) walk() (map[uint64]struct{}, error) {
	inside := make(map[uint64]struct{})
	err := filepath.WalkDir(s.root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			var id uint64
			if id, err = cgroup.ID(path); err == nil {
				inside[id] = struct{}{}
				err = s.readProcs(filepath.Join(path, "cgroup.procs"))
			}
		}
		if err != nil && path != s.root && errors.Is(err, fs.ErrNotExist) {
			return nil // removed while we walked
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("walking cgroup %s: %w", s.root, err)
	}
	return inside, nil
}

// readProcs visits every pid of one cgroup.procs file.
func (s *netnsScanner) readProcs(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(s.buf) {
			s.buf = append(s.buf, make([]byte, len(s.buf))...)
		}
		k, err := unix.Read(fd, s.buf[n:])
		if err != nil {
			if errors.Is(err, unix.ENODEV) {
				return nil // the cgroup was removed after it was opened
			}
			return err
		}
		if k == 0 {
			break
		}
		n += k
	}
	pid := 0
	for _, c := range s.buf[:n] {
		if c >= '0' && c <= '9' {
			pid = pid*10 + int(c-'0')
			continue
		}
		if pid > 0 {
			s.visit(pid)
		}
		pid = 0
	}
	if pid > 0 {
		s.visit(pid)
	}
	return nil
}

// visit notes that process pid is in the subtree.
func (s *netnsScanner) visit(pid int) {
	p, ok := s.pids[pid]
	if !ok || p.first+1 == s.scans || (pid+int(s.scans))%recheckEvery == 0 {
		if !ok {
			p.first = s.scans
		}
		id, err := s.statPid(pid)
		switch {
		case err == nil:
			p.netns, p.known = id, true
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH):
			return // it exited
		default: // EACCES without CAP_SYS_PTRACE, for another user's process
			p.known = false
		}
	}
	p.seen = s.scans
	s.pids[pid] = p
	if !p.known {
		s.denied++
		return
	}
	if _, ok := s.found[p.netns]; !ok {
		s.found[p.netns] = pid
	}
}

// openDiagSocketIn opens a NETLINK_SOCK_DIAG socket in the network
// namespace ns. A socket stays in the namespace it was created in, so only
// socket() runs on a thread moved into ns. That happens on a goroutine of
// its own, which stays locked to the thread if the thread cannot be moved
// back: the runtime then ends the thread with it, and no other goroutine
// ever runs in ns (nl.SubscribeAt would unlock the thread regardless).
func openDiagSocketIn(ns netns.NsHandle) (*nl.NetlinkSocket, error) {
	type result struct {
		sock *nl.NetlinkSocket
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		home, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("opening flowd's own network namespace: %w", err)}
			return
		}
		defer home.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("entering the network namespace: %w", err)}
			return
		}
		sock, err := nl.Subscribe(unix.NETLINK_SOCK_DIAG)
		if err := netns.Set(home); err != nil {
			if sock != nil {
				sock.Close()
			}
			done <- result{err: fmt.Errorf("returning to flowd's own network namespace: %w", err)}
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		if err != nil {
			err = fmt.Errorf("opening sock_diag netlink socket: %w", err)
		}
		done <- result{sock, err}
	}()
	r := <-done
	return r.sock, r.err
}

// namespaces holds the dumper of every network namespace a Run dumps: one
// pinned namespace (Config.Netns), or flowd's own and every namespace in
// which a process of the cgroup subtree lives, as a netnsScanner found
// before each dump. A namespace's dumper keeps its netlink socket, and so
// the namespace, alive; it is closed as soon as no process of the subtree
// lives there any more.
type namespaces struct {
	log logrus.FieldLogger
	own netnsID // flowd's own namespace, dumped whatever a scan finds

	mu      sync.Mutex // guards dumpers and closed: Close may run during a dump
	closed  bool
	dumpers map[netnsID]*dumper

	list    []*dumper            // the dumpers, in the order they are dumped
	refused map[netnsID]struct{} // namespaces flowd could not enter
	warned  bool                 // a refused namespace was logged as a warning

	openIn func(netns.NsHandle) (*nl.NetlinkSocket, error) // openDiagSocketIn, but for tests
}

// newPinnedNamespaces opens the namespace at path, the only one dumped.
func newPinnedNamespaces(log logrus.FieldLogger, path string) (*namespaces, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer h.Close()
	id, err := fstatNetns(h)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	sock, err := openDiagSocketIn(h)
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	n := &namespaces{log: log, dumpers: make(map[netnsID]*dumper)}
	if err := n.add(id, sock); err != nil {
		return nil, err
	}
	return n, nil
}

// newScannedNamespaces opens flowd's own namespace; sync adds the others.
func newScannedNamespaces(log logrus.FieldLogger) (*namespaces, error) {
	own, err := statNetns("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("identifying flowd's network namespace: %w", err)
	}
	sock, err := nl.Subscribe(unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("opening sock_diag netlink socket: %w", err)
	}
	n := &namespaces{
		log:     log,
		own:     own,
		dumpers: make(map[netnsID]*dumper),
		refused: make(map[netnsID]struct{}),
		openIn:  openDiagSocketIn,
	}
	if err := n.add(own, sock); err != nil {
		return nil, err
	}
	return n, nil
}

// add makes a dumper for namespace id out of sock, a netlink socket opened
// in it.
func (n *namespaces) add(id netnsID, sock *nl.NetlinkSocket) error {
	d, err := newDumper(n.log.WithField(logKeyNetns, id.ino), sock, id)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		d.close()
		return errClosed
	}
	n.dumpers[id] = d
	n.list = append(n.list, d)
	return nil
}

// sync makes the namespaces dumped those of found (a scan's: each
// namespace in use with one of its processes) and flowd's own: it opens
// those that are new and closes those no longer in use.
func (n *namespaces) sync(found map[netnsID]int) error {
	for id := range n.refused {
		if _, ok := found[id]; !ok {
			delete(n.refused, id) // gone: if it comes back, say so again
		}
	}
	for id := range n.dumpers {
		if _, ok := found[id]; !ok && id != n.own {
			n.remove(id)
		}
	}
	for id, pid := range found {
		if _, ok := n.dumpers[id]; ok {
			continue
		}
		if _, ok := n.refused[id]; ok {
			continue
		}
		if err := n.open(id, pid); err != nil {
			return err
		}
	}
	return nil
}

// open starts dumping namespace id, entered through process pid. A process
// that exited since the scan is no error: the next scan finds the
// namespace again through another process, if any. A namespace flowd may
// not enter is logged once and left out: the first as a warning, the
// others, likely refused for the same missing capability, at debug level.
func (n *namespaces) open(id netnsID, pid int) error {
	h, err := netns.GetFromPath(procNetnsPath(pid))
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err == nil {
		defer h.Close()
		var got netnsID
		if got, err = fstatNetns(h); err == nil && got != id {
			return nil // the process entered another namespace since the scan
		}
	}
	var sock *nl.NetlinkSocket
	if err == nil {
		sock, err = n.openIn(h)
	}
	if err != nil {
		n.refused[id] = struct{}{}
		log := n.log.WithError(err).WithFields(logrus.Fields{logKeyNetns: id.ino, logKeyPID: pid})
		if n.warned {
			log.Debug("cannot dump a network namespace in which processes of the cgroup live")
			return nil
		}
		n.warned = true
		log.Warn("cannot dump a network namespace in which processes of the cgroup live (entering one needs " +
			"CAP_SYS_ADMIN): its sockets are not reported; other such namespaces are logged at debug level")
		return nil
	}
	n.log.WithFields(logrus.Fields{logKeyNetns: id.ino, logKeyPID: pid}).Debug("dumping a new network namespace")
	return n.add(id, sock)
}

// remove stops dumping namespace id and closes its socket.
func (n *namespaces) remove(id netnsID) {
	n.mu.Lock()
	d := n.dumpers[id]
	delete(n.dumpers, id)
	d.close()
	n.mu.Unlock()
	n.list = slices.DeleteFunc(n.list, func(e *dumper) bool { return e == d })
	n.log.WithField(logKeyNetns, id.ino).Debug("no process of the cgroup lives in a network namespace any more: stopped dumping it")
}

// close closes every socket; a dump in progress ends with an error. A
// later sync opens nothing.
func (n *namespaces) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	for _, d := range n.dumpers {
		d.close()
	}
}
