// Package ebpf is flowd's eBPF backend: a BPF_PROG_TYPE_SOCK_OPS program
// attached to a cgroup v2 directory tracks the cgroup's TCP flows, a
// program this package runs once per interval samples them, an iterator
// finds the flows that began before flowd, and the programs send
// tcp_info-like records over a ring buffer, which this package reads and
// decodes.
package ebpf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
)

// Log field keys.
const (
	logKeyCgroup       = "cgroup"
	logKeyCgroupID     = "cgroup_id"
	logKeyMode         = "mode"
	logKeyInterval     = "interval"
	logKeyRingbufSize  = "ringbuf_size"
	logKeyHZ           = "hz"
	logKeyIdleInterval = "idle_interval"
	logKeyPIDs         = "pids"
	// The flows that began before flowd (walkExisting).
	logKeyFlows            = "flows"
	logKeyWithoutCallbacks = "without_callbacks"
	logKeyNetns            = "netns"
	logKeySkipped          = "skipped"
	logKeyUnreadable       = "unreadable_processes"
	logKeyUnreadableFirst  = "unreadable_errors"
	// Flows not tracked (logUntracked).
	logKeyUntracked      = "untracked"
	logKeyUntrackedTotal = "untracked_total"
	logKeyMaxFlows       = "max_flows"
)

// Mode chooses when the BPF program emits records.
type Mode string

const (
	// ModePoll samples every tracked flow that moved once per Interval,
	// besides open, state and close records.
	ModePoll Mode = "poll"
	// ModeTransition emits open, state and close records only.
	ModeTransition Mode = "transition"
)

// Defaults used when a Config field is zero.
const (
	DefaultRingbufSize   = 8 << 20
	DefaultFlushInterval = 100 * time.Millisecond
)

// DefaultMaxFlows is Config.MaxFlows when it is zero: 65,536 slots of 96
// bytes, 6 MiB of kernel memory.
const DefaultMaxFlows = 1 << 16

// Config configures the ebpf backend.
type Config struct {
	Cgroup string // cgroup2 directory to attach to (absolute, resolved)
	Mode   Mode   // poll (default) or transition
	// Interval is how often poll mode walks the tracked flows: each flow
	// whose segments in or out changed since its last record with
	// tcp_info (not a state record) gets a sample. 0: a sample on every RTT callback, and a walk every
	// FlushInterval for the flows that only receive.
	Interval time.Duration
	// IdleInterval: poll mode gives a flow that did not move one sample
	// this long after its last record (at the first walk from then on),
	// so that idle is not taken for lost. 0 = never.
	IdleInterval time.Duration
	// MaxFlows is how many flows are tracked at once; flows established
	// while that many are tracked are not (counted, and logged). 0 =
	// DefaultMaxFlows.
	MaxFlows      int
	RingbufSize   int           // bytes; a power of two and a multiple of the page size
	FlushInterval time.Duration // how often user space drains the ring buffer and flushes the sink
	Filter        backends.Filter
	// Members are the tcp_info members the program reads and reports;
	// none = every member. The others are left out of the records.
	Members []flow.Field
	// StopWhenRemoved: Run returns an error wrapping
	// backends.ErrCgroupRemoved when Cgroup is removed, instead of waiting
	// for a cgroup at the same path to attach to.
	StopWhenRemoved bool
	Log             logrus.FieldLogger
}

// Backend is the eBPF sockops backend. New loads and attaches it; Run reads
// its records; Close detaches it.
type Backend struct {
	cfg  Config
	log  logrus.FieldLogger
	objs bpfObjects

	// linksMu guards the links Run changes while Close may detach them.
	linksMu  sync.Mutex
	link     link.Link     // flowd_sockops on the cgroup; nil while it is removed
	removed  []removedLink // on removed cgroups, until the kernel detaches them (cgroup.go)
	setState link.Link     // flowd_set_state, while flows found running lack callbacks; nil otherwise
	detached bool          // by detach: nothing is attached any more

	existing    *link.Iter      // flowd_existing: walked by Run at start and on each new cgroup
	watch       *cgroup.Watcher // of the cgroup's path; nil for the cgroup2 root
	cgroupEvent atomic.Bool     // the watcher called: Run looks at the cgroup
	status      *backends.CgroupStatus
	reader      *ringbuf.Reader
	wake        *os.File // a duplicate of the ring buffer's fd, in Go's network poller: Run waits on it
	dec         decoder
	iterBuf     []byte // the TCP socket iterator's output is read in chunks of its size (see iterChunk)
	untracked   uint64 // untracked_flows when last logged
	polling     bool   // that the watcher polls has been logged

	detachOnce sync.Once
	detachErr  error
	closeOnce  sync.Once
	closeErr   error

	statsMu sync.RWMutex // held by Close while it frees what Unread and Programs read
	closed  bool
}

// New loads the BPF program, configured by cfg, attaches it to
// cfg.Cgroup and starts watching the cgroup's path. Nothing stays loaded
// when it fails.
func New(cfg Config) (*Backend, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	hz, err := kernelHZ()
	if err != nil {
		return nil, fmt.Errorf("finding the kernel's HZ: %w", err)
	}
	root, err := cgroup.Mount()
	if err != nil {
		return nil, err
	}
	allCgroups := filepath.Clean(cfg.Cgroup) == filepath.Clean(root)
	var subtree map[uint64]struct{}
	if !allCgroups {
		// The cgroups of the sockets that exist now, for flowd_existing.
		if subtree, err = cgroup.Subtree(cfg.Cgroup); err != nil {
			return nil, err
		}
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("loading BPF spec: %w", err)
	}
	pids := processIDs()
	if err := configure(spec, &cfg, hz, allCgroups, len(subtree), pids); err != nil {
		return nil, err
	}

	// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones
	// charge the memory cgroup, and this does nothing.
	memlockErr := rlimit.RemoveMemlock()
	b := &Backend{cfg: cfg, log: cfg.Log, iterBuf: make([]byte, iterChunk(cfg.RingbufSize))}
	if err := spec.LoadAndAssign(&b.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("loading BPF program: %+v", ve)
		}
		if memlockErr != nil && errors.Is(err, unix.EPERM) {
			return nil, fmt.Errorf("loading BPF program: %w (raising RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to, failed too: %v)", err, memlockErr)
		}
		return nil, fmt.Errorf("loading BPF program: %w", err)
	}
	if err := b.fillFilters(subtree); err != nil {
		b.objs.Close()
		return nil, err
	}
	b.reader, err = ringbuf.NewReader(b.objs.Events)
	if err != nil {
		b.objs.Close()
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	b.wake, err = pollable(b.objs.Events.FD(), "flowd-events")
	if err != nil {
		b.reader.Close()
		b.objs.Close()
		return nil, fmt.Errorf("opening ring buffer: %w", err)
	}
	b.dec.monoToWall = monoToWallOffset()

	var id uint64
	b.link, id, err = b.attachSockops(cfg.Cgroup)
	if err != nil {
		b.wake.Close()
		b.reader.Close()
		b.objs.Close()
		return nil, err
	}
	b.status = backends.NewCgroupStatus(cfg.Cgroup, id, time.Now())
	if err := b.attachIterators(); err != nil {
		b.Close()
		return nil, err
	}
	if !allCgroups { // the root cannot be removed
		b.watch = cgroup.Watch(cfg.Cgroup, b.cgroupChanged)
	}
	b.log.WithFields(logrus.Fields{
		logKeyCgroup: cfg.Cgroup, logKeyMode: cfg.Mode, logKeyInterval: cfg.Interval, logKeyIdleInterval: cfg.IdleInterval,
		logKeyRingbufSize: cfg.RingbufSize, logKeyHZ: hz, logKeyPIDs: pids,
	}).Info("ebpf backend attached")
	return b, nil
}

// attachIterators makes the link of the walk that finds the flows that
// began before flowd, and attaches the tracepoint that follows those of
// them without callbacks. It is attached before the walk that finds them,
// so that none of their changes is missed, and detached when none needs it
// (Run).
func (b *Backend) attachIterators() error {
	var err error
	if b.setState, err = link.AttachTracing(link.TracingOptions{Program: b.objs.FlowdSetState}); err != nil {
		return fmt.Errorf("attaching the inet_sock_set_state tracepoint: %w", err)
	}
	if b.existing, err = link.AttachIter(link.IterOptions{Program: b.objs.FlowdExisting}); err != nil {
		return fmt.Errorf("attaching the TCP socket iterator: %w", err)
	}
	return nil
}

func (c *Config) withDefaults() error {
	if c.Log == nil {
		l := logrus.New()
		l.Out = io.Discard
		c.Log = l
	}
	if c.Mode == "" {
		c.Mode = ModePoll
	}
	if c.Mode != ModePoll && c.Mode != ModeTransition {
		return fmt.Errorf("unknown mode %q", c.Mode)
	}
	if c.Interval < 0 {
		return fmt.Errorf("negative interval %s", c.Interval)
	}
	if c.IdleInterval < 0 {
		return fmt.Errorf("negative idle interval %s", c.IdleInterval)
	}
	if c.RingbufSize == 0 {
		c.RingbufSize = DefaultRingbufSize
	}
	page := os.Getpagesize()
	if c.RingbufSize < page || c.RingbufSize%page != 0 || bits.OnesCount(uint(c.RingbufSize)) != 1 {
		return fmt.Errorf("ring buffer size %d is not a power of two multiple of the page size %d", c.RingbufSize, page)
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxFlows < 1 || c.MaxFlows > 1<<24 {
		return fmt.Errorf("max flows %d is out of range 1..%d", c.MaxFlows, 1<<24)
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.Cgroup == "" {
		return errors.New("no cgroup given")
	}
	return nil
}

// configure sets the program's load-time constants and map sizes. pids:
// the program names the processes that connect flows.
func configure(spec *ebpf.CollectionSpec, cfg *Config, hz uint32, allCgroups bool, subtree int, pids bool) error {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("loading the kernel's BTF: %w", err)
	}
	var tcpSock *btf.Struct
	if err := kernel.TypeByName("tcp_sock", &tcpSock); err != nil {
		return fmt.Errorf("finding struct tcp_sock in the kernel's BTF: %w", err)
	}
	// The walk copies each socket it samples whole.
	tcpSockSize := tcpSock.Size
	var mode uint8
	if cfg.Mode == ModeTransition {
		mode = 1
	}
	f := &cfg.Filter
	consts := map[string]any{
		"mode":             mode,
		"interval_ns":      uint64(cfg.Interval.Nanoseconds()),
		"idle_interval_ns": uint64(cfg.IdleInterval.Nanoseconds()),
		"all_cgroups":      boolU8(allCgroups),
		"filter_ports":     boolU8(len(f.LocalPorts) > 0 || len(f.RemotePorts) > 0),
		"filter_cidrs":     boolU8(len(f.RemoteCIDRs) > 0),
		"wakeup_bytes":     wakeupBytes(cfg.RingbufSize),

		"select_members": boolU8(len(cfg.Members) > 0),
		"members":        memberMask(cfg.Members),
		"max_flows":      uint32(cfg.MaxFlows),
		"process_ids":    boolU8(pids),
	}
	jc := jiffyConversions(hz)
	consts["jiffy_usec_num"], consts["jiffy_usec_den"] = jc.usecNum, jc.usecDen
	consts["jiffy_msec_num"], consts["jiffy_msec_den"] = jc.msecNum, jc.msecDen
	consts["usec_per_jiffy"] = jc.usecPerJiffy
	for name, v := range consts {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("BPF object lacks variable %s", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	spec.Maps["events"].MaxEntries = uint32(cfg.RingbufSize)
	spec.Maps["subtree"].MaxEntries = uint32(max(minSubtreeEntries, subtree))
	spec.Maps["slots"].MaxEntries = uint32(cfg.MaxFlows)
	spec.Maps["free_slots"].MaxEntries = uint32(cfg.MaxFlows)
	spec.Maps["copies"].ValueSize = tcpSockSize
	spec.Maps["local_ports"].MaxEntries = uint32(max(1, len(f.LocalPorts)))
	spec.Maps["remote_ports"].MaxEntries = uint32(max(1, len(f.RemotePorts)))
	spec.Maps["remote_cidrs"].MaxEntries = uint32(max(1, len(f.RemoteCIDRs)))
	return nil
}

// memberMask is the program's members constant: a bit per enum flowd_field
// (the same numbers as flow.Field); every field when none are listed.
func memberMask(members []flow.Field) flow.Mask {
	if len(members) == 0 {
		return flow.AllFields()
	}
	return flow.MaskOf(members...)
}

// wakeupBytes is how much unread data makes the program wake the reader
// early: half the buffer. Otherwise it drains on its FlushInterval
// timer.
func wakeupBytes(ringbufSize int) uint64 {
	return uint64(ringbufSize / 2)
}

func boolU8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func (b *Backend) fillFilters(subtree map[uint64]struct{}) error {
	one := uint8(1)
	for id := range subtree {
		if err := b.objs.Subtree.Put(id, one); err != nil {
			return fmt.Errorf("adding cgroup %d to the subtree: %w", id, err)
		}
	}
	for _, p := range b.cfg.Filter.LocalPorts {
		if err := b.objs.LocalPorts.Put(p, one); err != nil {
			return fmt.Errorf("adding local port %d to the filter: %w", p, err)
		}
	}
	for _, p := range b.cfg.Filter.RemotePorts {
		if err := b.objs.RemotePorts.Put(p, one); err != nil {
			return fmt.Errorf("adding remote port %d to the filter: %w", p, err)
		}
	}
	for _, p := range b.cfg.Filter.RemoteCIDRs {
		m := backends.MappedPrefix(p.Masked())
		key := bpfFlowdCidrKey{Prefixlen: uint32(m.Bits()), Addr: m.Addr().As16()}
		if err := b.objs.RemoteCidrs.Put(key, one); err != nil {
			return fmt.Errorf("adding remote CIDR %s to the filter: %w", p, err)
		}
	}
	return nil
}

// monoToWallOffset returns wall-clock minus CLOCK_MONOTONIC, in ns.
func monoToWallOffset() int64 {
	var ts unix.Timespec
	before := time.Now()
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	after := time.Now()
	mid := before.UnixNano() + after.Sub(before).Nanoseconds()/2
	return mid - ts.Nano()
}

// Name returns "ebpf".
func (b *Backend) Name() string { return flow.BackendEBPF }

// Run reads records until ctx is cancelled, then detaches the program,
// drains what the ring buffer still holds and returns. First it walks the
// TCP sockets for the flows that began before flowd. The ring buffer is
// drained every FlushInterval, and the sink flushed after it (a
// flow.Flusher); the program wakes the reader early only when half of the
// buffer is unread. In poll mode the tracked flows are walked every
// Interval (every FlushInterval at Interval 0), from the same loop. When
// the cgroup is removed, Run waits for a cgroup at the same path, attaches
// to it and walks its sockets, or, with Config.StopWhenRemoved, stops with
// an error (cgroup.go).
//
// The reader never blocks in a system call of its own: ReadInto, with a
// deadline in the past, only drains, and Run waits for the next tick or
// wakeup in Go's network poller (a duplicate of the ring buffer's fd, see
// New). So one timer drives the drain and the flush, and while Run waits
// its thread and processor are free, which lets the Go runtime's monitor
// thread sleep instead of polling a thread stuck in epoll_wait.
func (b *Backend) Run(ctx context.Context, sink flow.Sink) error {
	rc, err := b.wake.SyscallConn()
	if err != nil {
		return fmt.Errorf("ring buffer wakeups: %w", err)
	}
	// Cancelling ctx ends the current wait at once.
	stop := context.AfterFunc(ctx, func() { _ = b.wake.SetReadDeadline(time.Now()) })
	defer stop()
	b.reader.SetDeadline(time.Unix(1, 0))

	var (
		raw    ringbuf.Record
		rec    flow.Record
		runErr error
	)
	netns, err := b.walkExisting(&raw, &rec, sink)
	if err != nil {
		return err
	}
	found, _ := b.variable(b.objs.ExistingFlows)
	uncalled, _ := b.variable(b.objs.ExistingWithoutCallbacks)
	b.log.WithFields(logrus.Fields{logKeyFlows: found, logKeyWithoutCallbacks: uncalled, logKeyNetns: netns}).Info(
		"ebpf backend tracks the flows that began before it")

	sampling := b.cfg.Mode == ModePoll
	now := time.Now()
	next, nextWalk, nextLinkCheck := now.Add(b.cfg.FlushInterval), now.Add(b.walkPeriod()), now
	for {
		closed, err := b.drain(&raw, &rec, sink)
		if err != nil || closed {
			return err
		}
		if b.cgroupEvent.Swap(false) {
			if runErr = b.followCgroup(&raw, &rec, sink); runErr != nil {
				break
			}
		}
		now := time.Now()
		if sampling && !now.Before(nextWalk) {
			// From this walk's start: walks are never closer than the
			// interval, so neither are two samples of a flow.
			nextWalk = now.Add(b.walkPeriod())
			if err := b.sample(&raw, &rec, sink); err != nil {
				return err
			}
		}
		if !now.Before(next) {
			// The batch goes to the output now.
			if err := flow.Flush(sink); err != nil {
				return fmt.Errorf("flushing records: %w", err)
			}
			next = now.Add(b.cfg.FlushInterval)
			b.detachSetStateWhenUnused()
			b.logUntracked()
			if !now.Before(nextLinkCheck) {
				nextLinkCheck = now.Add(removedLinksCheck)
				b.releaseRemovedLinks()
			}
		}
		deadline := next
		if sampling && nextWalk.Before(deadline) {
			deadline = nextWalk
		}
		if err := b.wake.SetReadDeadline(deadline); err != nil {
			if errors.Is(err, os.ErrNoDeadline) { // not in the poller: cannot happen since Linux 5.8
				runErr = fmt.Errorf("waiting for the ring buffer: %w", err)
			}
			break // or Close closed it
		}
		if ctx.Err() != nil {
			break
		}
		if b.cgroupEvent.Load() {
			continue // the watcher called after the loop looked
		}
		// Until the next tick, a wakeup by the program, or ctx's end.
		first := true
		err = rc.Read(func(uintptr) bool {
			ready := !first
			first = false
			return ready
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			break // Close closed it
		}
	}

	// Stop new records, then read everything already submitted.
	b.detach()
	_, err = b.drain(&raw, &rec, sink)
	return errors.Join(runErr, err)
}

// walkPeriod is the time between two walks of the tracked flows.
func (b *Backend) walkPeriod() time.Duration {
	if b.cfg.Interval == 0 {
		return b.cfg.FlushInterval
	}
	return b.cfg.Interval
}

// drain delivers every record the ring buffer holds to sink. closed
// reports that the reader was closed (by Close).
func (b *Backend) drain(raw *ringbuf.Record, rec *flow.Record, sink flow.Sink) (closed bool, err error) {
	for {
		err := b.reader.ReadInto(raw)
		switch {
		case err == nil:
			if err := b.deliver(raw.RawSample, rec, sink); err != nil {
				return false, err
			}
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
			return false, nil
		case errors.Is(err, ringbuf.ErrClosed), errors.Is(err, os.ErrClosed):
			return true, nil
		default:
			return false, fmt.Errorf("reading ring buffer: %w", err)
		}
	}
}

func (b *Backend) deliver(raw []byte, rec *flow.Record, sink flow.Sink) error {
	if err := b.dec.decode(raw, rec); err != nil {
		b.log.WithError(err).Warn("dropping malformed record")
		return nil
	}
	if err := sink.Write(rec); err != nil {
		return fmt.Errorf("writing record: %w", err)
	}
	return nil
}

// Drops returns how many records the program could not send because the
// ring buffer was full.
func (b *Backend) Drops() (uint64, error) {
	var perCPU []uint64
	if err := b.objs.Drops.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading drop counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// pollable returns a non-blocking duplicate of fd (a ring buffer map's) as
// an *os.File, which Go registers with its network poller: reading from
// it is never done, waiting for it to become readable (the program's
// wakeups) is.
func pollable(fd int, name string) (*os.File, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicating fd: %w", err)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("making fd non-blocking: %w", err)
	}
	return os.NewFile(uintptr(dup), name), nil
}

// detach removes the programs from the cgroups and the tracepoint; the
// maps stay readable.
func (b *Backend) detach() error {
	b.detachOnce.Do(func() {
		var errs []error
		b.linksMu.Lock()
		defer b.linksMu.Unlock()
		b.detached = true
		if b.setState != nil {
			errs = append(errs, b.setState.Close())
			b.setState = nil
		}
		if b.link != nil {
			errs = append(errs, b.link.Close())
		}
		for _, r := range b.removed {
			errs = append(errs, r.link.Close())
		}
		b.removed = nil
		b.detachErr = errors.Join(errs...)
	})
	return b.detachErr
}

// Close detaches the program and frees the maps. It is idempotent. Records
// not yet read are lost: Run drains them when its context is cancelled.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.statsMu.Lock()
		defer b.statsMu.Unlock()
		b.closed = true
		var errs []error
		if b.watch != nil {
			errs = append(errs, b.watch.Close()) // before wake, which it uses
		}
		if b.existing != nil {
			errs = append(errs, b.existing.Close())
		}
		errs = append(errs, b.detach())
		if b.wake != nil {
			errs = append(errs, b.wake.Close())
		}
		if b.reader != nil {
			errs = append(errs, b.reader.Close())
		}
		errs = append(errs, b.objs.Close())
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}
