// Package flow is the vocabulary of flowd's data path: the Record a backend
// produces about one TCP flow, its events and states, the names and units
// of its tcp_info members, and the Sink records are written to. It imports
// nothing of flowd, so that producers and consumers of records both
// depend on it and not on each other.
package flow

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Event says why a record was produced.
type Event uint8

// Event kinds. The numbering is shared with the BPF program (enum flowd_event).
const (
	EventOpen   Event = 1 // the flow was established, or first seen (Record.Existing)
	EventSample Event = 2 // a periodic sample
	EventState  Event = 3 // the TCP state changed
	EventClose  Event = 4 // the flow is gone; counters are final
)

var eventNames = [...]string{"", "open", "sample", "state", "close"}

func (e Event) String() string {
	if int(e) < len(eventNames) && eventNames[e] != "" {
		return eventNames[e]
	}
	return "unknown"
}

// ParseEvent is the inverse of Event.String.
func ParseEvent(s string) (Event, bool) {
	for i, n := range eventNames {
		if n != "" && n == s {
			return Event(i), true
		}
	}
	return 0, false
}

// MarshalText returns the event's name.
func (e Event) MarshalText() ([]byte, error) {
	if _, ok := ParseEvent(e.String()); !ok {
		return nil, fmt.Errorf("%d is not an event", e)
	}
	return []byte(e.String()), nil
}

// UnmarshalText reads an event's name.
func (e *Event) UnmarshalText(text []byte) error {
	v, ok := ParseEvent(string(text))
	if !ok {
		return fmt.Errorf("%q is not one of %s", text, strings.Join(eventNames[1:], ", "))
	}
	*e = v
	return nil
}

// State is a TCP state as numbered by the kernel (include/net/tcp_states.h).
type State uint8

// TCP states.
const (
	StateEstablished   State = 1
	StateSynSent       State = 2
	StateSynRecv       State = 3
	StateFinWait1      State = 4
	StateFinWait2      State = 5
	StateTimeWait      State = 6
	StateClose         State = 7
	StateCloseWait     State = 8
	StateLastAck       State = 9
	StateListen        State = 10
	StateClosing       State = 11
	StateNewSynRecv    State = 12
	StateBoundInactive State = 13
)

var stateNames = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE"}

// String returns the kernel's name of the state, as ss(8) prints it.
func (s State) String() string {
	if int(s) < len(stateNames) && stateNames[s] != "" {
		return stateNames[s]
	}
	return "UNKNOWN"
}

// ParseState is the inverse of State.String.
func ParseState(s string) (State, bool) {
	for i, n := range stateNames {
		if n != "" && n == s {
			return State(i), true
		}
	}
	return 0, false
}

// The backends' names, as records and logs carry them.
const (
	BackendEBPF    = "ebpf"
	BackendNetlink = "netlink"
)

// Record is one observation of one TCP flow, from either backend.
type Record struct {
	Time    time.Time // wall clock, when the kernel (ebpf) or the dump (netlink) saw it
	Backend string    // BackendEBPF or BackendNetlink
	Event   Event
	Cookie  uint64 // the socket cookie: the same for both backends
	// Existing is set on the open record of a flow that was established
	// before the backend tracked it (it was found running).
	Existing bool
	CgroupID uint64 // cgroup v2 id (inode number) of the socket's cgroup
	// Cgroup is that cgroup's path below the cgroup2 mount
	// ("system.slice/nginx.service", "/" for the root), "" when unknown.
	// The daemon fills it in from CgroupID; backends leave it empty.
	Cgroup string
	Family uint8 // 4 or 6 (the socket's family; v4-mapped addresses stay 6)

	LocalAddr  netip.Addr
	RemoteAddr netip.Addr
	LocalPort  uint16
	RemotePort uint16

	State    State  // the state the flow is in (the new state on EventState)
	OldState State  // on EventState, and on EventClose when the backend saw the change to CLOSE (ebpf)
	CA       string // congestion control name, e.g. "cubic"

	// PID is the process that connected the flow (its thread group id, in
	// the initial PID namespace) and Comm that process's name at the
	// time; 0 and "" where the backend cannot tell (flows accepted or
	// found running, connected by a kernel thread, the netlink backend).
	PID  uint32
	Comm string

	Info TCPInfo
}

// Sink receives records. Write must not keep r after it returns. A sink
// shared by several backends must be safe for concurrent use.
type Sink interface {
	Write(r *Record) error
}

// Flusher is implemented by sinks that buffer records (the JSON Lines
// output). Backends call Flush after each batch they deliver (the ebpf
// backend when it has drained its ring buffer on its flush timer, netlink
// after each poll), so that records reach the output with the batch and
// the daemon needs no timer of its own.
type Flusher interface {
	Flush() error
}

// Flush flushes s if it is a Flusher.
func Flush(s Sink) error {
	if f, ok := s.(Flusher); ok {
		return f.Flush()
	}
	return nil
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(r *Record) error

// Write calls f(r).
func (f SinkFunc) Write(r *Record) error { return f(r) }
