// Package backends defines what a flowd backend is: something that produces
// flow.Records about the flows it selects (Filter) and writes them to a
// flow.Sink. The implementations are backends/ebpf and backends/netlink.
package backends

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/flowd/flowd/flow"
)

// Backend produces records about the flows it observes.
//
// Run blocks until ctx is cancelled or the backend fails; before it returns
// it delivers every record it has already collected to sink. Close releases
// the backend's resources; it may be called more than once and after Run.
type Backend interface {
	Name() string
	Run(ctx context.Context, sink flow.Sink) error
	Close() error
}

// DropCounter is implemented by backends that can lose records (ebpf, when
// its ring buffer is full). Drops is the total lost since the backend started.
type DropCounter interface {
	Drops() (uint64, error)
}

// FlowCounter is implemented by backends that know how many flows they
// currently track.
type FlowCounter interface {
	Flows() int
}

// ErrCgroupRemoved is wrapped by the error Run returns when the configured
// cgroup was removed and the backend was configured to stop then rather
// than wait for a cgroup at the same path.
var ErrCgroupRemoved = errors.New("cgroup removed")

// CgroupFollower is implemented by backends that follow their cgroup
// being removed and created again (systemd does both when it restarts a
// unit): a removed cgroup's flows are followed as far as the backend
// still sees them, and a new cgroup at the same path is attached to.
type CgroupFollower interface {
	CgroupState() CgroupState
}

// CgroupState is what a backend knows of its cgroup.
type CgroupState struct {
	Path string
	// Attached: the cgroup at Path exists and the backend records its
	// flows. false: it was removed; the backend waits for a cgroup at
	// Path (and records, as far as it can, the flows that outlive it).
	Attached bool
	// Since is when Attached last changed; at first, when the backend
	// attached.
	Since time.Time
	// ID is the cgroup id attached to; while waiting, the removed one's.
	// It changes when the cgroup is created again: ids are never reused.
	ID uint64
	// Removals counts the cgroups found removed (or replaced by another
	// at Path) since the backend started.
	Removals uint64
}

func (s CgroupState) String() string {
	if s.Attached {
		return fmt.Sprintf("attached to cgroup %s (id %d) since %s", s.Path, s.ID, s.Since.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("cgroup %s (id %d) removed at %s; waiting for a cgroup at that path",
		s.Path, s.ID, s.Since.UTC().Format(time.RFC3339))
}

// CgroupStatus keeps a backend's CgroupState; it is safe for concurrent
// use.
type CgroupStatus struct {
	mu sync.Mutex
	s  CgroupState
}

// NewCgroupStatus returns the status of a backend attached, at now, to
// cgroup id at path.
func NewCgroupStatus(path string, id uint64, now time.Time) *CgroupStatus {
	return &CgroupStatus{s: CgroupState{Path: path, Attached: true, Since: now, ID: id}}
}

// State returns the current state.
func (c *CgroupStatus) State() CgroupState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s
}

// Removed notes that the cgroup attached to was found removed at now.
func (c *CgroupStatus) Removed(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s.Attached {
		c.s.Attached, c.s.Since = false, now
		c.s.Removals++
	}
}

// Attached notes that the backend attached, at now, to cgroup id, which
// replaces the one it was attached to, if any, as removed.
func (c *CgroupStatus) Attached(id uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.s.Attached {
		if c.s.ID == id {
			return
		}
		c.s.Removals++
	}
	c.s.Attached, c.s.Since, c.s.ID = true, now, id
}

// UnreadCounter is implemented by backends that read records from a
// buffer the kernel fills (ebpf's ring buffer). Unread returns the bytes
// of records written to it and not read yet, and its size in bytes.
type UnreadCounter interface {
	Unread() (unread, size int)
}

// DumpReporter is implemented by backends that poll the kernel with dumps
// (netlink).
type DumpReporter interface {
	Dumps() DumpStats
}

// DumpStats says how a backend's dumps went.
type DumpStats struct {
	// Durations of the rounds of dumps (one per poll, every network
	// namespace) since the previous call to Dumps, oldest first; at most
	// the last MaxDumpDurations.
	Durations []time.Duration
	// Failed is the number of dumps that failed or were given up since the
	// backend started.
	Failed uint64
}

// MaxDumpDurations bounds the durations a DumpReporter keeps between two
// calls to Dumps.
const MaxDumpDurations = 1024

// ProgramReporter is implemented by backends that run BPF programs
// (ebpf). Programs returns what the kernel counted of each of them: run
// counts and times are 0 unless the kernel's BPF statistics are enabled
// (BPF_ENABLE_STATS or the kernel.bpf_stats_enabled sysctl).
type ProgramReporter interface {
	Programs() ([]ProgramStats, error)
}

// ProgramStats is what the kernel counted of one BPF program.
type ProgramStats struct {
	Name            string // the program's name in its object, e.g. flowd_sockops
	Runs            uint64
	RunTime         time.Duration
	RecursionMisses uint64 // runs skipped because a BPF program already ran on that CPU
}
