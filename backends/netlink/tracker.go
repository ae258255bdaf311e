package netlink

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
)

// maxCANames bounds the congestion control names a tracker keeps so that
// records share one string per name instead of allocating one each.
const maxCANames = 16

// trackedFlow is what the tracker knows about one tracked socket.
type trackedFlow struct {
	rec    flow.Record // as of the last dump that saw it; Time, Event and OldState unused
	gen    uint64      // the last dump that saw it
	netns  netnsID     // the namespace whose dumps list it
	opened bool        // its open record was written
}

// tracker turns the sockets of successive dumps into records: open when a
// socket is first seen established (in ESTABLISHED or a later state), state
// when its TCP state changed since the previous dump, sample otherwise, and
// close when it is no longer in a dump. A socket still in SYN_SENT or
// SYN_RECV is tracked silently until it is established; one that never is
// gets no record at all, as with the ebpf backend, whose open record
// comes from the kernel's "established" callbacks. Each opened flow gets
// exactly one record per dump, so no state record repeats a state.
//
// A dump is begin, then observe for every socket of every namespace (and
// keep for the namespaces whose dump failed), then sweep.
type tracker struct {
	flows   map[uint64]*trackedFlow // by socket cookie: unique on the host
	opened  int                     // flows whose open record was written
	spare   []*trackedFlow          // flows of closed sockets, reused for new ones
	gen     uint64                  // the current dump, counting from 1
	now     time.Time               // time of the current dump
	out     flow.Record             // the record handed to the sink, reused
	caNames []string
}

func newTracker() *tracker {
	return &tracker{flows: make(map[uint64]*trackedFlow)}
}

// begin starts a dump made at now.
func (t *tracker) begin(now time.Time) {
	t.gen++
	t.now = now
}

// tracked reports whether the flow with this cookie is tracked already.
// Tracked flows are not checked against the scope and filter again: a
// socket's cgroup, ports and remote address do not change.
func (t *tracker) tracked(cookie uint64) bool {
	_, ok := t.flows[cookie]
	return ok
}

// appendCgroupIDs appends to ids the cgroup ids of the tracked flows that
// are not in known (with repeats).
func (t *tracker) appendCgroupIDs(ids []uint64, known map[uint64]struct{}) []uint64 {
	for _, f := range t.flows {
		if _, ok := known[f.rec.CgroupID]; !ok {
			ids = append(ids, f.rec.CgroupID)
		}
	}
	return ids
}

// observe records that the current dump of namespace ns holds m, a socket
// that has tcp_info, and returns the record to write for it, or nil when
// there is none: m is not established yet, or its cookie was seen before
// in this dump. The record is valid until the next call.
func (t *tracker) observe(m *diagMsg, ns netnsID) *flow.Record {
	f, ok := t.flows[m.cookie]
	switch {
	case !ok:
		f = t.newFlow(m, ns)
		t.flows[m.cookie] = f
	case f.gen == t.gen:
		return nil // listed twice by one dump
	}
	f.gen = t.gen
	state := flow.State(m.state)
	f.rec.CA = t.caName(m.cong, f.rec.CA)
	decodeTCPInfo(&f.rec.Info, m.info)
	ev := flow.EventSample
	var old flow.State
	switch {
	case !f.opened:
		if !established(state, &f.rec.Info) {
			return nil
		}
		f.opened = true
		t.opened++
		ev = flow.EventOpen
	case f.rec.State != state:
		ev = flow.EventState
		old = f.rec.State
	}
	f.rec.State = state

	t.out = f.rec
	t.out.Time = t.now
	t.out.Event = ev
	t.out.OldState = old
	// What the first dump finds established began before flowd.
	t.out.Existing = ev == flow.EventOpen && t.gen == 1
	return &t.out
}

// established reports whether a socket in state s with tcp_info info has
// been established. A socket in CLOSE has if its handshake delivered
// something (tcpi_delivered counts the SYN or SYN-ACK the peer
// acknowledged): one whose connect() failed delivered nothing.
func established(s flow.State, info *flow.TCPInfo) bool {
	switch s {
	case flow.StateSynSent, flow.StateSynRecv:
		return false
	case flow.StateClose:
		n, ok := info.Get(flow.FieldDelivered)
		return !ok || n > 0
	}
	return true
}

// keep marks the flows of namespace ns as seen by the current dump, whose
// dump of ns failed: they are neither sampled nor closed.
func (t *tracker) keep(ns netnsID) {
	for _, f := range t.flows {
		if f.netns == ns {
			f.gen = t.gen
		}
	}
}

// newFlow returns a flow for m's socket in namespace ns with its identity
// filled in.
func (t *tracker) newFlow(m *diagMsg, ns netnsID) *trackedFlow {
	var f *trackedFlow
	if n := len(t.spare); n > 0 {
		f = t.spare[n-1]
		t.spare[n-1] = nil
		t.spare = t.spare[:n-1]
	} else {
		f = new(trackedFlow)
	}
	f.netns, f.opened = ns, false
	r := &f.rec
	*r = flow.Record{
		Backend:    flow.BackendNetlink,
		Cookie:     m.cookie,
		CgroupID:   m.cgroupID,
		LocalPort:  m.sport,
		RemotePort: m.dport,
	}
	r.LocalAddr, r.RemoteAddr = m.addrs()
	r.Family = 6
	if m.family == unix.AF_INET {
		r.Family = 4
	}
	return f
}

// caName returns the congestion control name b as a string, reusing prev
// or a name seen before when b equals it (the comparisons do not allocate).
func (t *tracker) caName(b []byte, prev string) string {
	if string(b) == prev {
		return prev
	}
	for _, n := range t.caNames {
		if string(b) == n {
			return n
		}
	}
	s := string(b)
	if len(t.caNames) < maxCANames {
		t.caNames = append(t.caNames, s)
	}
	return s
}

// sweep ends the current dump: every tracked flow it did not see is gone.
// For each that was opened, it writes a close record holding the flow's
// last seen state and counters to s; it forgets them all. It stops at the
// first error.
func (t *tracker) sweep(s flow.Sink) error {
	for cookie, f := range t.flows {
		if f.gen == t.gen {
			continue
		}
		delete(t.flows, cookie)
		t.spare = append(t.spare, f)
		if !f.opened {
			continue
		}
		t.opened--
		t.out = f.rec
		t.out.Time = t.now
		t.out.Event = flow.EventClose
		t.out.OldState = 0
		if err := s.Write(&t.out); err != nil {
			return err
		}
	}
	return nil
}

// len returns the number of opened flows.
func (t *tracker) len() int { return t.opened }
