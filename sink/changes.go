package sink

import (
	"net/netip"
	"slices"
	"time"

	"github.com/flowd/flowd/flow"
)

// Samples says what the tcp_info of a sample record's line holds.
type Samples uint8

const (
	// SamplesFull: every member the record has, as on every other event.
	SamplesFull Samples = iota
	// SamplesChanges: a sample line holds, besides time, backend, event
	// and cookie, only the tcp_info members whose values changed since the
	// flow's previous line in this output, and "partial":true. A Filler
	// gives it back the rest.
	SamplesChanges
)

// String returns the name output.samples uses.
func (s Samples) String() string {
	switch s {
	case SamplesFull:
		return "full"
	case SamplesChanges:
		return "changes"
	}
	return "unknown"
}

const (
	// CompleteEvery is how long at most a flow's samples go on being
	// partial: its first sample this long after its last complete line is
	// complete again, so that a reader that starts in the middle of an
	// output knows every member of a flow within this time.
	CompleteEvery = 10 * time.Second
	// forgetAfter is how long the last line of a flow that has not closed
	// is remembered; the next sample of a flow forgotten is complete.
	forgetAfter = time.Minute
)

// lastLine is what a flow's previous line held: its header (Time, Event,
// Backend, Cookie and a state event's OldState aside) and its tcp_info. It is kept for every flow
// the output has seen, so it is compact: the members that tcp_info holds
// in 32 bits take 32 bits here. A record with a larger value in one of
// them (no backend makes one) gets a complete line, and so does the
// flow's next sample.
type lastLine struct {
	present  flow.Mask
	narrow   [flow.NumFields]uint32 // by Field; the wide members' entries unused
	wide     [numWide]uint64        // by wideFields' order
	overflow bool                   // a 32-bit member did not fit in narrow
	complete int64                  // the time of the flow's last complete line, in Unix ns
	seen     int64                  // the time of its last line, in Unix ns

	cgroupID              uint64
	localAddr, remoteAddr netip.Addr
	cgroup, ca, comm      string
	pid                   uint32
	localPort, remotePort uint16
	family                uint8
	state                 flow.State
}

// The members that struct tcp_info holds in 64 bits, and the others.
var (
	wideFields = [...]flow.Field{flow.FieldPacingRate, flow.FieldMaxPacingRate,
		flow.FieldBytesAcked, flow.FieldBytesReceived, flow.FieldDeliveryRate, flow.FieldBusyTime,
		flow.FieldRwndLimited, flow.FieldSndbufLimited, flow.FieldBytesSent, flow.FieldBytesRetrans}
	narrowFields = func() (n [int(flow.NumFields) - numWide]flow.Field) {
		i := 0
		for f := range flow.NumFields {
			if !slices.Contains(wideFields[:], f) {
				n[i] = f
				i++
			}
		}
		return n
	}()
)

const numWide = len(wideFields)

// narrowByWord and wideByWord are narrowFields, and the indices of
// wideFields, by the word of the presence masks that holds their bit.
var (
	narrowByWord = func() (w [flow.MaskWords][]flow.Field) {
		for _, f := range narrowFields {
			w[f/64] = append(w[f/64], f)
		}
		return w
	}()
	wideByWord = func() (w [flow.MaskWords][]int) {
		for i, f := range wideFields {
			w[f/64] = append(w[f/64], i)
		}
		return w
	}()
)

// remember makes l hold r's header and values.
func (l *lastLine) remember(r *flow.Record) {
	l.rememberHeader(r)
	l.present = r.Info.Present
	var hi uint64
	for _, f := range narrowFields {
		v := r.Info.Values[f]
		l.narrow[f] = uint32(v)
		hi |= v >> 32
	}
	l.overflow = hi != 0
	for i, f := range wideFields {
		l.wide[i] = r.Info.Values[f]
	}
}

// rememberHeader makes l hold r's header.
func (l *lastLine) rememberHeader(r *flow.Record) {
	l.cgroupID, l.cgroup, l.family, l.ca = r.CgroupID, r.Cgroup, r.Family, r.CA
	l.localAddr, l.localPort, l.remoteAddr, l.remotePort = r.LocalAddr, r.LocalPort, r.RemoteAddr, r.RemotePort
	l.state, l.pid, l.comm = r.State, r.PID, r.Comm
}

// merge makes l hold r's header and, besides the values it holds, those of
// the members r has: what a reader knows of the flow after the state
// record r, whose line is complete but may hold few members.
func (l *lastLine) merge(r *flow.Record) {
	l.rememberHeader(r)
	for f := range r.Info.Present.Fields() {
		v := r.Info.Values[f]
		if i := slices.Index(wideFields[:], f); i >= 0 {
			l.wide[i] = v
		} else {
			l.narrow[f] = uint32(v)
			l.overflow = l.overflow || v>>32 != 0
		}
	}
	l.present = l.present.Or(r.Info.Present)
}

// sameHeader reports whether r has the header of the flow's previous line.
func (l *lastLine) sameHeader(r *flow.Record) bool {
	return r.CgroupID == l.cgroupID && r.Cgroup == l.cgroup && r.Family == l.family &&
		r.LocalAddr == l.localAddr && r.LocalPort == l.localPort &&
		r.RemoteAddr == l.remoteAddr && r.RemotePort == l.remotePort &&
		r.State == l.state && r.CA == l.ca && r.PID == l.pid && r.Comm == l.comm
}

// changes decides, record by record, which tcp_info members a line can
// leave out under SamplesChanges. The two backends' records of a socket are
// separate series. It is not safe for concurrent use.
type changes struct {
	backends []backendLines
	swept    int64 // when forgotten flows were last looked for, in Unix ns
}

// backendLines holds the flows of one backend, by cookie.
type backendLines struct {
	name  string
	flows map[uint64]*lastLine
}

// flows returns the flows of the named backend.
func (c *changes) flows(backend string) map[uint64]*lastLine {
	for i := range c.backends {
		if c.backends[i].name == backend {
			return c.backends[i].flows
		}
	}
	m := make(map[uint64]*lastLine)
	c.backends = append(c.backends, backendLines{backend, m})
	return m
}

// unchanged returns the members of r to leave out of its line, and whether
// the line is partial (then the mask is what it leaves out). Only samples
// are partial, and only when the flow's previous line is known, recent
// enough (CompleteEvery since its last complete line), had the same header
// (addresses, ports, cgroup id and path, state, congestion control,
// process) and no member that r lacks: a reader carries the previous values
// forward, so a member that went away, or a header that changed (a cgroup
// path found since), needs a complete line to say so. A close record
// forgets the flow. A state record's line is complete but may hold few
// members (the ebpf backend's in poll mode hold none): it updates what the
// flow's next sample is compared with, as a Filler updates what it fills
// from, and does not count as a complete line.
func (c *changes) unchanged(r *flow.Record) (omit flow.Mask, partial bool) {
	now := r.Time.UnixNano()
	if c.backends == nil {
		c.swept = now
	}
	flows := c.flows(r.Backend)
	last := flows[r.Cookie]
	switch {
	case r.Event == flow.EventClose:
		delete(flows, r.Cookie)
		return omit, false
	case r.Event == flow.EventState:
		if last != nil {
			last.merge(r)
			last.seen = now
		}
		return omit, false
	case last == nil:
		last = new(lastLine)
		flows[r.Cookie] = last
	case r.Event == flow.EventSample:
		since := now - last.complete
		partial = since >= 0 && since < int64(CompleteEvery) && !last.overflow && last.sameHeader(r) &&
			last.present.AndNot(r.Info.Present).IsEmpty()
	}
	if partial {
		// Every member is compared, present or not, and the previous
		// values replaced as it goes; the presence masks then keep the
		// members that count. The header is the same, so it needs no copy.
		// Each word of the mask is built in a local, so that a comparison
		// does not wait for the store of the one before
		// (docs/performance.md, "Partial samples").
		var hi uint64
		for w := range omit {
			var o uint64
			for _, f := range narrowByWord[w] {
				v := r.Info.Values[f]
				var same uint64
				if uint64(last.narrow[f]) == v {
					same = 1
				}
				hi |= v >> 32
				last.narrow[f] = uint32(v)
				o |= same << (f % 64)
			}
			for _, i := range wideByWord[w] {
				f := wideFields[i]
				v := r.Info.Values[f]
				var same uint64
				if last.wide[i] == v {
					same = 1
				}
				last.wide[i] = v
				o |= same << (f % 64)
			}
			omit[w] = o
		}
		if hi != 0 {
			partial, omit = false, flow.Mask{}
		} else {
			omit = omit.And(r.Info.Present).And(last.present)
			last.present = r.Info.Present
		}
	}
	if !partial {
		last.complete = now
		last.remember(r)
	}
	last.seen = now
	if d := now - c.swept; d >= int64(forgetAfter) || d < 0 {
		c.forget(now)
	}
	return omit, partial
}

// closed forgets the flow r closes.
func (c *changes) closed(r *flow.Record) { delete(c.flows(r.Backend), r.Cookie) }

// forget drops the flows not seen for forgetAfter before now: flows whose
// close record never came (lost in a full ring buffer, or flowd stopped
// watching them).
func (c *changes) forget(now int64) {
	for _, b := range c.backends {
		for cookie, l := range b.flows {
			if now-l.seen >= int64(forgetAfter) {
				delete(b.flows, cookie)
			}
		}
	}
	c.swept = now
}

// reset forgets every flow: the next line of each is complete.
func (c *changes) reset() { c.backends = nil }

// flowKey names a flow in one backend's records.
type flowKey struct {
	backend string
	cookie  uint64
}

// A Filler gives partial samples (SamplesChanges) back what they leave out,
// from the previous line of the same flow. Feed it the lines of one output
// in order, from its start.
type Filler struct {
	flows map[flowKey]*flow.Record
}

// Fill completes r, parsed from a line that was partial or not, in place.
// It reports false for a partial sample whose flow it has not seen before
// (its reader started in the middle of the output): r keeps only what its
// line had. A state record is never filled: its line is complete, with the
// members its backend gave it (none, from the ebpf backend in poll mode);
// what it has updates what the flow's next partial samples are filled
// from, and it does not make a flow known.
func (f *Filler) Fill(r *flow.Record, partial bool) bool {
	if f.flows == nil {
		f.flows = make(map[flowKey]*flow.Record)
	}
	k := flowKey{r.Backend, r.Cookie}
	last := f.flows[k]
	switch {
	case partial && last == nil:
		return false
	case partial:
		r.CgroupID, r.Cgroup, r.Family, r.CA = last.CgroupID, last.Cgroup, last.Family, last.CA
		r.LocalAddr, r.LocalPort = last.LocalAddr, last.LocalPort
		r.RemoteAddr, r.RemotePort = last.RemoteAddr, last.RemotePort
		r.State, r.OldState = last.State, 0 // a sample has no old state
		r.PID, r.Comm = last.PID, last.Comm
		for m := range last.Info.Present.AndNot(r.Info.Present).Fields() {
			r.Info.Values[m] = last.Info.Values[m]
		}
		r.Info.Present = r.Info.Present.Or(last.Info.Present)
	case r.Event == flow.EventClose:
		delete(f.flows, k)
		return true
	case r.Event == flow.EventState:
		if last != nil {
			info := last.Info
			for m := range r.Info.Present.Fields() {
				info.Values[m] = r.Info.Values[m]
			}
			info.Present = info.Present.Or(r.Info.Present)
			*last = *r
			last.Info = info
		}
		return true
	}
	if last == nil {
		last = new(flow.Record)
		f.flows[k] = last
	}
	*last = *r
	return true
}
