package ebpf

import (
	"errors"
	"fmt"
	"io"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
)

// iterChunk is how many bytes one read of the TCP socket iterator asks
// for, so that it sends at most as many records as fit in half the ring
// buffer (the wakeup watermark), which is drained between reads: the
// program writes one byte of output per record, and the kernel ends a read
// once it has as many as were asked for (its buffer for a read is 32 KiB).
func iterChunk(ringbufSize int) int {
	return max(1, min(int(wakeupBytes(ringbufSize))/recordSize, 16<<10))
}

// sample runs one walk of the tracked flows (flowd_sample), delivering the
// records it sends; the program stops each run once half the ring buffer
// is unread, and goes on from there in the next.
func (b *Backend) sample(raw *ringbuf.Record, rec *flow.Record, sink flow.Sink) error {
	for {
		more, err := b.objs.FlowdSample.Run(&ebpf.RunOptions{})
		if err != nil {
			return fmt.Errorf("sampling the tracked flows: %w", err)
		}
		if _, err := b.drain(raw, rec, sink); err != nil {
			return err
		}
		if more == 0 {
			return nil
		}
	}
}

// readWalk reads the TCP socket iterator's output chunk by chunk, draining
// the ring buffer after each.
func (b *Backend) readWalk(rd io.Reader, raw *ringbuf.Record, rec *flow.Record, sink flow.Sink) error {
	for {
		n, err := rd.Read(b.iterBuf)
		if _, derr := b.drain(raw, rec, sink); derr != nil {
			return derr
		}
		switch {
		case errors.Is(err, unix.EAGAIN):
			// The kernel stops a read that met a million objects
			// without output; the next one goes on from there.
		case errors.Is(err, io.EOF), err == nil && n == 0:
			return nil
		case err != nil:
			return fmt.Errorf("walking: %w", err)
		}
	}
}

// walkExisting tracks the flows that began before flowd (or before it
// attached to the cgroup created again): it walks the TCP sockets of
// flowd's network namespace and of every namespace a process of the
// cgroup subtree lives in (an iterator sees the namespace it was made in),
// then detaches the tracepoint if no flow needs it. It returns how many
// namespaces it walked.
func (b *Backend) walkExisting(raw *ringbuf.Record, rec *flow.Record, sink flow.Sink) (int, error) {
	rd, err := b.existing.Open()
	if err != nil {
		return 0, fmt.Errorf("finding the flows that began before flowd: %w", err)
	}
	err = b.readWalk(rd, raw, rec, sink)
	rd.Close()
	if err != nil {
		return 0, fmt.Errorf("finding the flows that began before flowd: %w", err)
	}
	spaces, unreadable, err := otherNetns(b.cfg.Cgroup)
	if cgroup.IsRemoved(err) {
		spaces, err = nil, nil // the cgroup was removed meanwhile: no process is left in it
	}
	if err != nil {
		return 0, fmt.Errorf("finding the network namespaces of %s: %w", b.cfg.Cgroup, err)
	}
	var skipped []string
	for _, path := range spaces {
		rd, err := openIn(path, b.existing)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s (%v)", path, err))
			continue
		}
		err = b.readWalk(rd, raw, rec, sink)
		rd.Close()
		if err != nil {
			return 0, fmt.Errorf("finding the flows that began before flowd in %s: %w", path, err)
		}
	}
	const notFound = "their flows that began before flowd are recorded from their next state change if an earlier flowd tracked them, else not at all"
	if len(skipped) > 0 {
		b.log.WithField(logKeySkipped, skipped).Warn(
			"network namespaces of the cgroup not searched (entering one needs CAP_SYS_ADMIN): " + notFound)
	}
	if unreadable.n > 0 {
		b.log.WithFields(logrus.Fields{logKeyUnreadable: unreadable.n, logKeyUnreadableFirst: unreadable.first}).Warn(
			"cannot read the network namespace of some processes of the cgroup (reading /proc/PID/ns/net " +
				"needs CAP_SYS_PTRACE; the errors say what failed): in the namespaces only they live in, " + notFound)
	}
	b.detachSetStateWhenUnused()
	return 1 + len(spaces) - len(skipped), nil
}

// variable reads one of the program's global counters.
func (b *Backend) variable(v *ebpf.Variable) (uint64, error) {
	var n uint64
	err := v.Get(&n)
	return n, err
}

// detachSetStateWhenUnused detaches the tracepoint once no flow needs it:
// it runs on every state change of every socket of the host.
func (b *Backend) detachSetStateWhenUnused() {
	b.linksMu.Lock()
	defer b.linksMu.Unlock()
	if b.setState == nil {
		return
	}
	if n, err := b.variable(b.objs.ExistingWithoutCallbacks); err != nil || n > 0 {
		return
	}
	if err := b.setState.Close(); err != nil {
		b.log.WithError(err).Warn("detaching the inet_sock_set_state tracepoint")
	}
	b.setState = nil
}

// logUntracked logs the flows not tracked since it last did, because
// MaxFlows were tracked.
func (b *Backend) logUntracked() {
	n, err := b.variable(b.objs.UntrackedFlows)
	if err != nil || n == b.untracked {
		return
	}
	b.log.WithFields(logrus.Fields{logKeyUntracked: n - b.untracked, logKeyUntrackedTotal: n, logKeyMaxFlows: b.cfg.MaxFlows}).Warn(
		"flows not tracked: as many as max_flows are")
	b.untracked = n
}

// otherNetns returns the network namespaces the processes of the cgroup
// subtree live in, other than flowd's own, each as the namespace file of
// one of its processes, and the processes whose namespace could not be
// read (processes that exited meanwhile are not counted).
func otherNetns(dir string) (paths []string, unreadable unreadableProcesses, err error) {
	pids, err := cgroup.Processes(dir)
	if err != nil {
		return nil, unreadable, err
	}
	var own unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &own); err != nil {
		return nil, unreadable, fmt.Errorf("reading flowd's network namespace: %w", err)
	}
	type nsID struct{ dev, ino uint64 }
	seen := map[nsID]bool{{own.Dev, own.Ino}: true}
	for _, pid := range pids {
		path := fmt.Sprintf("/proc/%d/ns/net", pid)
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
				unreadable.add(path, err)
			}
			continue
		}
		if id := (nsID{st.Dev, st.Ino}); !seen[id] {
			seen[id] = true
			paths = append(paths, path)
		}
	}
	return paths, unreadable, nil
}

// unreadableProcesses counts the processes whose network namespace could
// not be read, and keeps the first errors: the cause is not always a
// missing capability (a process of another user namespace refuses even
// root), so the warning shows what failed.
type unreadableProcesses struct {
	n     int
	first []string
}

func (u *unreadableProcesses) add(path string, err error) {
	u.n++
	if len(u.first) < 3 {
		u.first = append(u.first, fmt.Sprintf("%s: %v", path, err))
	}
}

// openIn starts a walk of it in the network namespace whose file is path:
// the kernel binds an iterator to the namespace of the thread that makes
// it, so that is done on a thread of its own, which goes back to flowd's
// namespace (or ends with its goroutine if it cannot).
func openIn(path string, it *link.Iter) (io.ReadCloser, error) {
	type result struct {
		rd  io.ReadCloser
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		rd, back, err := func() (io.ReadCloser, bool, error) {
			own, err := netns.Get()
			if err != nil {
				return nil, true, err
			}
			defer own.Close()
			target, err := netns.GetFromPath(path)
			if err != nil {
				return nil, true, err
			}
			defer target.Close()
			if err := netns.Set(target); err != nil {
				return nil, true, err
			}
			rd, err := it.Open()
			return rd, netns.Set(own) == nil, err
		}()
		if back {
			runtime.UnlockOSThread()
		}
		done <- result{rd, err}
	}()
	r := <-done
	return r.rd, r.err
}
