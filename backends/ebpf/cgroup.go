package ebpf

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/sirupsen/logrus"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
)

// When the cgroup is removed, the kernel goes on running the program for
// the sockets that outlive it: each socket holds a reference on its
// cgroup's BPF programs (cgroup_sk_alloc), and only once the last one is
// freed does the kernel release them and detach the cgroup's links itself
// (cgroup_bpf_release), leaving each link defunct, its cgroup id 0. So the
// link of a removed cgroup is kept until then, and its flows get their
// samples, state changes and close records to the end (closing the link
// earlier would take the program away from them); a cgroup created at the
// same path gets a link of its own.

// minSubtreeEntries is the least room the subtree map has, so that the
// cgroups of a subtree created again after a removal fit into it.
const minSubtreeEntries = 64

// removedLinksCheck is how often the links of removed cgroups are checked
// for the kernel having detached them.
const removedLinksCheck = time.Second

// removedLink is the link of a removed cgroup, kept while the kernel runs
// the program for its sockets.
type removedLink struct {
	link     link.Link
	cgroupID uint64
}

// attachSockops attaches flowd_sockops to the cgroup at path and returns
// the link and the id of the cgroup it attached to.
func (b *Backend) attachSockops(path string) (link.Link, uint64, error) {
	l, err := link.AttachCgroup(link.CgroupOptions{
		Path:    path,
		Attach:  ebpf.AttachCGroupSockOps,
		Program: b.objs.FlowdSockops,
	})
	if err != nil {
		return nil, 0, fmt.Errorf("attaching sockops to %s: %w", path, err)
	}
	if id, ok := linkCgroupID(l); ok {
		return l, id, nil
	}
	id, err := cgroup.ID(path) // no link info (attached without a bpf_link)
	if err != nil {
		l.Close()
		return nil, 0, fmt.Errorf("attaching sockops to %s: %w", path, err)
	}
	return l, id, nil
}

// linkCgroupID returns the id of the cgroup a cgroup link is attached to:
// 0 once the kernel detached it because its cgroup is gone.
func linkCgroupID(l link.Link) (uint64, bool) {
	info, err := l.Info()
	if err != nil {
		return 0, false
	}
	c := info.Cgroup()
	if c == nil {
		return 0, false
	}
	return c.CgroupId, true
}

// cgroupChanged is the watcher's call: the cgroup may have been removed or
// created. Run looks at it.
func (b *Backend) cgroupChanged() {
	b.cgroupEvent.Store(true)
	_ = b.wake.SetReadDeadline(time.Now()) // ends Run's wait
}

// followCgroup looks at the configured path after the watcher's call.
// When the cgroup attached to is gone (removed, or replaced by another at
// the path), its link is kept for the sockets that outlive it and the
// backend waits, or stops when configured so (an error wrapping
// backends.ErrCgroupRemoved); when a cgroup is there, the program is
// attached to it and the flows already in it are found.
func (b *Backend) followCgroup(raw *ringbuf.Record, rec *flow.Record, sink flow.Sink) error {
	path := b.cfg.Cgroup
	if err := b.watch.Polling(); err != nil && !b.polling {
		b.polling = true
		b.log.WithError(err).WithField(logKeyCgroup, path).Warn(
			"cannot watch the cgroup with inotify: looking at it every second instead")
	}
	st := b.status.State()
	id, err := cgroup.ID(path)
	present := err == nil
	if st.Attached {
		if present && id == st.ID {
			return nil // the event was about something else
		}
		b.linksMu.Lock()
		b.removed = append(b.removed, removedLink{b.link, st.ID})
		b.link = nil
		b.linksMu.Unlock()
		if b.cfg.StopWhenRemoved {
			b.status.Removed(time.Now())
			return fmt.Errorf("%w: %s (id %d)", backends.ErrCgroupRemoved, path, st.ID)
		}
		b.log.WithFields(logrus.Fields{logKeyCgroup: path, logKeyCgroupID: st.ID}).Warn(
			"cgroup removed: its flows that outlive it are still recorded until they close; " +
				"waiting for a cgroup at the same path to attach to")
		b.status.Removed(time.Now())
	}
	if !present {
		return nil
	}
	return b.attachAgain(raw, rec, sink, id)
}

// attachAgain attaches the program to the cgroup that appeared at the
// configured path, whose id was id when looked at, and finds the flows
// established in it before that.
func (b *Backend) attachAgain(raw *ringbuf.Record, rec *flow.Record, sink flow.Sink, id uint64) error {
	path := b.cfg.Cgroup
	l, attached, err := b.attachSockops(path)
	if err != nil {
		if current, serr := cgroup.ID(path); serr != nil || current != id {
			return nil // removed (and maybe created) again since: the watcher calls again
		}
		return err
	}
	b.linksMu.Lock()
	if b.detached { // Close detached everything meanwhile
		b.linksMu.Unlock()
		return l.Close()
	}
	b.link = l
	b.linksMu.Unlock()
	b.status.Attached(attached, time.Now())

	found, err := b.walkSubtreeAgain(raw, rec, sink)
	if err != nil {
		return err
	}
	b.log.WithFields(logrus.Fields{logKeyCgroup: path, logKeyCgroupID: attached, logKeyFlows: found}).Info(
		"attached to the cgroup created again; flows already in it are recorded from now")
	return nil
}

// walkSubtreeAgain finds the flows established in the subtree of the cgroup
// attached to again before the program was attached: the walk of the
// start, over the new subtree. It returns how many it found.
func (b *Backend) walkSubtreeAgain(raw *ringbuf.Record, rec *flow.Record, sink flow.Sink) (uint64, error) {
	ids, err := cgroup.Subtree(b.cfg.Cgroup)
	if cgroup.IsRemoved(err) {
		return 0, nil // removed again
	}
	if err != nil {
		return 0, err
	}
	if err := b.setSubtree(ids); err != nil {
		return 0, err
	}
	b.linksMu.Lock()
	if b.setState == nil && !b.detached {
		b.setState, err = link.AttachTracing(link.TracingOptions{Program: b.objs.FlowdSetState})
	}
	b.linksMu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("attaching the inet_sock_set_state tracepoint: %w", err)
	}
	before, _ := b.variable(b.objs.ExistingFlows)
	if _, err := b.walkExisting(raw, rec, sink); err != nil {
		return 0, err
	}
	after, _ := b.variable(b.objs.ExistingFlows)
	return after - before, nil
}

// setSubtree makes ids the cgroups flowd_existing takes flows from. When
// they are more than the map holds (its size was set at start), the
// others are left out, with a warning.
func (b *Backend) setSubtree(ids map[uint64]struct{}) error {
	var (
		key  uint64
		keys []uint64
	)
	it := b.objs.Subtree.Iterate()
	for it.Next(&key, new(uint8)) {
		keys = append(keys, key)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading the subtree map: %w", err)
	}
	for _, k := range keys {
		if err := b.objs.Subtree.Delete(k); err != nil {
			return fmt.Errorf("emptying the subtree map: %w", err)
		}
	}
	room := int(b.objs.Subtree.MaxEntries())
	for id := range ids {
		if room == 0 {
			b.log.WithFields(logrus.Fields{logKeyCgroup: b.cfg.Cgroup, logKeySkipped: len(ids) - int(b.objs.Subtree.MaxEntries())}).Warn(
				"the cgroup created again has more cgroups below it than it had at start: the flows established in " +
					"the others before flowd attached are not recorded")
			break
		}
		if err := b.objs.Subtree.Put(id, uint8(1)); err != nil {
			return fmt.Errorf("adding cgroup %d to the subtree: %w", id, err)
		}
		room--
	}
	return nil
}

// releaseRemovedLinks closes the links of removed cgroups that the kernel
// has detached: every socket of their cgroup is gone, and so were their
// records.
func (b *Backend) releaseRemovedLinks() {
	b.linksMu.Lock()
	defer b.linksMu.Unlock()
	kept := b.removed[:0]
	for _, r := range b.removed {
		if id, ok := linkCgroupID(r.link); ok && id == 0 {
			if err := r.link.Close(); err != nil {
				b.log.WithError(err).Warn("closing the link of a removed cgroup")
			}
			b.log.WithField(logKeyCgroupID, r.cgroupID).Info("the last socket of the removed cgroup is gone")
			continue
		}
		kept = append(kept, r)
	}
	clear(b.removed[len(kept):])
	b.removed = kept
}

// CgroupState says whether the backend is attached to its cgroup, or
// waits for one to be created at its path, and since when.
func (b *Backend) CgroupState() backends.CgroupState { return b.status.State() }
