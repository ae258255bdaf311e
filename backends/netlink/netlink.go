// Package netlink is flowd's inet_diag backend. Every Interval it dumps the
// kernel's IPv4 and IPv6 TCP sockets over NETLINK_SOCK_DIAG, with their raw
// struct tcp_info, congestion control and cgroup id, keeps those in the
// configured cgroup subtree that pass the filter, and compares each dump
// with the previous one to produce open, state, sample and close records.
// inet_diag sees one network namespace per netlink socket, so the backend
// keeps a socket in each namespace in which a process of the subtree lives.
//
// It needs no BPF, so it is the fallback when the ebpf backend cannot run,
// but it only sees what exists at dump time: flows shorter than Interval
// may be missed and state changes between two dumps are merged into one.
package netlink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
)

// Log field keys.
const (
	logKeyBackend   = "backend"
	logKeyCgroup    = "cgroup"
	logKeyCgroupID  = "cgroup_id"
	logKeyFamily    = "family"
	logKeyAttempt   = "attempt"
	logKeyAttempts  = "attempts"
	logKeySkipped   = "skipped_in_a_row"
	logKeyNetns     = "netns" // the namespace's inode number, as lsns and /proc/PID/ns/net show it
	logKeyPID       = "pid"
	logKeyProcesses = "processes"
)

// Config configures the netlink backend.
type Config struct {
	Cgroup   string        // cgroup2 directory whose subtree is reported (absolute, resolved)
	Interval time.Duration // time between two inet_diag dumps
	Filter   backends.Filter
	// Netns is the path of the one network namespace (e.g. /run/netns/NAME
	// or /proc/PID/ns/net) whose sockets are dumped. "" = flowd's own and
	// every namespace in which a process of the cgroup subtree lives,
	// found again before each dump.
	Netns string
	// StopWhenRemoved: Run returns an error wrapping
	// backends.ErrCgroupRemoved when Cgroup is removed (after the dump
	// that found it so), instead of waiting for a cgroup at the same path.
	StopWhenRemoved bool
	Log             logrus.FieldLogger // may be nil: then nothing is logged
}

var (
	errClosed  = errors.New("netlink backend is closed")
	errRunning = errors.New("netlink backend is already running")
)

// Backend reports flows from periodic inet_diag dumps. It implements
// backends.Backend, backends.FlowCounter, backends.CgroupFollower and
// backends.DumpReporter.
type Backend struct {
	cfg      Config
	log      logrus.FieldLogger
	matchAll bool // cfg.Cgroup is the cgroup2 root: every socket is in scope

	flows  atomic.Int64 // tracked flows, for Flows
	dumps  dumpLog      // for Dumps
	status *backends.CgroupStatus

	mu      sync.Mutex
	closed  bool
	nets    *namespaces // the open netlink sockets while Run runs
	running bool
}

// New checks cfg and returns a backend ready to Run. It opens nothing: the
// netlink sockets are opened by Run.
func New(cfg Config) (*Backend, error) {
	if cfg.Interval <= 0 {
		return nil, fmt.Errorf("interval must be positive, got %s", cfg.Interval)
	}
	if cfg.Cgroup == "" {
		return nil, errors.New("cgroup is not set")
	}
	if !filepath.IsAbs(cfg.Cgroup) {
		return nil, fmt.Errorf("cgroup %q is not an absolute path", cfg.Cgroup)
	}
	if cfg.Netns != "" {
		if _, err := os.Stat(cfg.Netns); err != nil {
			return nil, fmt.Errorf("network namespace: %w", err)
		}
	}
	if err := cgroup.Check(cfg.Cgroup); err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	id, err := cgroup.ID(cfg.Cgroup)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	mount, err := cgroup.Mount()
	if err != nil {
		return nil, fmt.Errorf("finding the cgroup2 root: %w", err)
	}
	rootID, err := cgroup.ID(mount)
	if err != nil {
		return nil, fmt.Errorf("finding the cgroup2 root: %w", err)
	}

	cfg.Filter = backends.Filter{
		LocalPorts:  slices.Clone(cfg.Filter.LocalPorts),
		RemotePorts: slices.Clone(cfg.Filter.RemotePorts),
		RemoteCIDRs: slices.Clone(cfg.Filter.RemoteCIDRs),
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = l
	}
	return &Backend{
		cfg:      cfg,
		log:      log.WithField(logKeyBackend, flow.BackendNetlink),
		matchAll: id == rootID,
		status:   backends.NewCgroupStatus(cfg.Cgroup, id, time.Now()),
	}, nil
}

// Name returns "netlink".
func (b *Backend) Name() string { return flow.BackendNetlink }

// Flows returns the number of flows opened and not closed after the last
// dump of the current Run (0 when not running).
func (b *Backend) Flows() int { return int(b.flows.Load()) }

// CgroupState says whether the cgroup existed at the last dump, or the
// backend waits for one to be created at its path, and since when.
func (b *Backend) CgroupState() backends.CgroupState { return b.status.State() }

// Dumps returns the durations of the rounds of dumps made since the
// previous call, and how many dumps failed or were skipped (interrupted
// again and again) since the backend was made.
func (b *Backend) Dumps() backends.DumpStats { return b.dumps.take() }

// dumpLog collects what Dumps returns.
type dumpLog struct {
	mu        sync.Mutex
	durations []time.Duration
	failed    uint64
}

// add notes a round of dumps that took d, and failed dumps.
func (l *dumpLog) add(d time.Duration, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.durations) == backends.MaxDumpDurations {
		l.durations = append(l.durations[:0], l.durations[1:]...)
	}
	l.durations = append(l.durations, d)
	l.failed += uint64(failed)
}

func (l *dumpLog) take() backends.DumpStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := backends.DumpStats{Durations: l.durations, Failed: l.failed}
	l.durations = nil
	return s
}

// Run dumps the sockets at once and then every Interval, writing the
// records of each dump to s, until ctx is cancelled; then it returns nil
// without writing close records for the flows still alive. A namespace's
// dump that the kernel keeps flagging as interrupted is skipped with a
// warning. A namespace no process of the subtree lives in any more is no
// longer dumped, and its flows get close records; one flowd may not enter
// is logged once and left out. Run returns an error when the netlink
// socket of flowd's own or of the pinned namespace cannot be opened, when
// a socket cannot be read, when the cgroup subtree cannot be read or when
// s fails. When the cgroup is removed, the flows of its sockets that
// outlive it are still dumped (by their cgroup id) until they close, and
// Run waits for a cgroup at the same path, or, with StopWhenRemoved,
// returns an error after that dump. Only one Run may be active at a
// time; Close ends it.
func (b *Backend) Run(ctx context.Context, s flow.Sink) error {
	p, err := b.start()
	if err != nil {
		return err
	}
	defer b.stop()

	tick := time.NewTicker(b.cfg.Interval)
	defer tick.Stop()
	for ctx.Err() == nil {
		err := p.poll(s)
		if errors.Is(err, backends.ErrCgroupRemoved) {
			return errors.Join(err, flow.Flush(s))
		}
		if err != nil {
			if b.isClosed() {
				return errClosed
			}
			return err
		}
		if err := flow.Flush(s); err != nil {
			return fmt.Errorf("flushing records: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	return nil
}

// start opens the first netlink socket and returns the poller of a Run.
func (b *Backend) start() (*poller, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return nil, errClosed
	case b.running:
		return nil, errRunning
	}
	p, err := b.newPoller()
	if err != nil {
		return nil, err
	}
	b.nets = p.nets
	b.running = true
	return p, nil
}

// stop closes the netlink sockets of a Run.
func (b *Backend) stop() {
	b.flows.Store(0)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nets.close()
	b.nets = nil
	b.running = false
}

func (b *Backend) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// Close releases the backend. A Run in progress stops (with an error,
// unless its context was cancelled) and later Runs fail. Close may be
// called more than once; it always returns nil.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.nets != nil {
		b.nets.close()
	}
	return nil
}

// poller holds the state of one Run: the netlink sockets, the flows and
// what is known about the cgroup subtree.
type poller struct {
	nets    *namespaces
	scanner *netnsScanner // nil: one pinned namespace
	denied  bool          // the processes whose namespace the scanner could not read were logged
	t       *tracker
	scope   scope
	filter  backends.Filter
	log     logrus.FieldLogger
	flows   *atomic.Int64 // where to publish the number of tracked flows
	dumps   *dumpLog      // where to note the dumps' durations and failures
	msg     diagMsg       // the message being processed, reused
	warned  bool          // the missing INET_DIAG_CGROUP_ID has been logged
	status  *backends.CgroupStatus
	stop    bool // Config.StopWhenRemoved

	userFilter bool        // the kernel rejected the cgroup filter: filter in user space only
	kfilter    *diagFilter // the in-kernel filter of the next dumps; nil: none
	cgroups    []uint64    // the filter's cgroup ids, reused
}

func (b *Backend) newPoller() (*poller, error) {
	var nets *namespaces
	var scanner *netnsScanner
	var err error
	if b.cfg.Netns != "" {
		nets, err = newPinnedNamespaces(b.log, b.cfg.Netns)
	} else {
		nets, err = newScannedNamespaces(b.log)
		scanner = newNetnsScanner(b.cfg.Cgroup, b.matchAll)
	}
	if err != nil {
		return nil, err
	}
	return &poller{
		nets:    nets,
		scanner: scanner,
		t:       newTracker(),
		scope:   newScope(b.cfg.Cgroup, b.matchAll),
		filter:  b.cfg.Filter,
		log:     b.log,
		flows:   &b.flows,
		status:  b.status,
		stop:    b.cfg.StopWhenRemoved,
		dumps:   &b.dumps,
	}, nil
}

// poll dumps every namespace once and writes the records to s. When it
// found the cgroup removed and stop is set, it returns an error wrapping
// backends.ErrCgroupRemoved after the dump.
func (p *poller) poll(s flow.Sink) error {
	now := time.Now().UTC()
	stopErr := p.followCgroup(now)
	p.scope.newDump()
	if err := p.scan(); err != nil {
		return err
	}
	if err := p.filterInKernel(); err != nil {
		return err
	}
	p.t.begin(now)
	var took time.Duration
	failed := 0
	for _, d := range p.nets.list {
		ok, err := p.dump(d, s, &took)
		if !ok {
			failed++
		}
		if err != nil {
			p.dumps.add(took, failed)
			return err
		}
	}
	p.dumps.add(took, failed)
	err := p.t.sweep(s)
	p.flows.Store(int64(p.t.len()))
	if err != nil {
		return fmt.Errorf("writing record: %w", err)
	}
	return stopErr
}

// followCgroup looks, before a dump, whether the cgroup at the configured
// path is still the one of the previous dump (one stat: the dump walks the
// subtree anyway). When it was removed, the dump's scope is empty, and the
// flows already tracked go on being dumped by their cgroup id until they
// close; when a cgroup is there again, its flows are recorded from this
// dump. With stop set, a cgroup found removed (or replaced by another)
// makes it return an error wrapping backends.ErrCgroupRemoved.
func (p *poller) followCgroup(now time.Time) error {
	if p.scope.all {
		return nil
	}
	st := p.status.State()
	id, err := cgroup.ID(p.scope.root)
	present := err == nil
	if st.Attached && present && id == st.ID {
		return nil
	}
	if st.Attached {
		if p.stop {
			p.status.Removed(now)
			return fmt.Errorf("%w: %s (id %d)", backends.ErrCgroupRemoved, p.scope.root, st.ID)
		}
		p.log.WithFields(logrus.Fields{logKeyCgroup: p.scope.root, logKeyCgroupID: st.ID}).Warn(
			"cgroup removed: its flows that outlive it are still recorded until they close; " +
				"waiting for a cgroup at the same path")
		p.status.Removed(now)
	}
	if present {
		p.status.Attached(id, now)
		p.log.WithFields(logrus.Fields{logKeyCgroup: p.scope.root, logKeyCgroupID: id}).Info(
			"the cgroup was created again: its flows are recorded from this dump")
	}
	return nil
}

// scan finds the namespaces in use and has them dumped. Its walk of the
// cgroup subtree is also this dump's walk of the scope.
func (p *poller) scan() error {
	if p.scanner == nil {
		return nil
	}
	found, inside, err := p.scanner.scan()
	if err != nil {
		return err
	}
	if inside != nil {
		p.scope.use(inside)
	}
	if p.scanner.denied > 0 && !p.denied {
		p.denied = true
		p.log.WithField(logKeyProcesses, p.scanner.denied).Warn("cannot read the network namespace of some " +
			"processes of the cgroup (reading /proc/PID/ns/net needs CAP_SYS_PTRACE): the namespaces " +
			"only they live in are not dumped")
	}
	return p.nets.sync(found)
}

// dump makes d's dump, adding the time it took to took, and writes the
// records of its sockets to s. ok reports whether the dump was made.
func (p *poller) dump(d *dumper, s flow.Sink, took *time.Duration) (ok bool, err error) {
	d.filter(p.kfilter)
	start := time.Now()
	msgs, err := d.dump()
	if err != nil && d.kfilter != nil && errors.Is(err, unix.EINVAL) {
		p.log.WithError(err).Info("the kernel rejected the inet_diag cgroup filter (INET_DIAG_BC_CGROUP_COND " +
			"needs Linux 5.9): every TCP socket of the host is dumped and filtered in user space")
		p.userFilter, p.kfilter = true, nil
		d.filter(nil)
		msgs, err = d.dump()
	}
	*took += time.Since(start)
	if errors.Is(err, nl.ErrDumpInterrupted) {
		// The kernel's socket tables kept changing under the dump. What it
		// returned may miss sockets, which would read as closed flows:
		// skip this namespace for this interval rather than report them.
		d.skipped++
		d.log.WithError(err).WithFields(logrus.Fields{
			logKeyAttempts: maxDumpAttempts,
			logKeySkipped:  d.skipped,
		}).Warn("inet_diag dump kept being interrupted, skipping it")
		p.t.keep(d.netns)
		return false, nil
	}
	if err != nil {
		return false, err
	}
	d.skipped = 0
	for _, b := range msgs {
		if err := p.process(b, d.netns, s); err != nil {
			return true, err
		}
	}
	return true, nil
}

// filterInKernel has the next dumps return only the sockets of the cgroup
// subtree (walked again now, so that it holds the cgroups made since the
// last dump) and of the flows already tracked, so that the kernel neither
// fills in tcp_info for the host's other sockets nor copies them out: the
// dump's cost follows the monitored sockets, not all of the host's. The
// cgroup2 root takes every socket, and a subtree of more than
// maxFilterCgroups cgroups is filtered in user space only; process checks
// the scope in either case.
func (p *poller) filterInKernel() error {
	if p.scope.all || p.userFilter {
		return nil
	}
	inside, err := p.scope.ids()
	if err != nil {
		return err
	}
	ids := p.cgroups[:0]
	for id := range inside {
		ids = append(ids, id)
	}
	ids = p.t.appendCgroupIDs(ids, inside) // flows whose cgroup was removed since
	slices.Sort(ids)
	ids = slices.Compact(ids)
	p.cgroups = ids
	switch {
	case len(ids) > maxFilterCgroups:
		p.kfilter = nil
	case p.kfilter == nil || !slices.Equal(ids, p.kfilter.cgroups):
		p.kfilter = newDiagFilter(ids)
	}
	return nil
}

// process handles b, one message of the current dump of namespace ns.
func (p *poller) process(b []byte, ns netnsID, s flow.Sink) error {
	m := &p.msg
	if err := parseDiagMsg(b, m); err != nil {
		return fmt.Errorf("parsing inet_diag message: %w", err)
	}
	if m.info == nil {
		// Not a full socket, so not a flow (and its full socket is gone):
		// the states mask leaves minisockets out, but a timewait socket
		// still in FIN_WAIT2 matches it.
		return nil
	}
	if m.family != unix.AF_INET && m.family != unix.AF_INET6 {
		return nil
	}
	if !p.t.tracked(m.cookie) {
		ok, err := p.wanted(m)
		if err != nil || !ok {
			return err
		}
	}
	if r := p.t.observe(m, ns); r != nil {
		if err := s.Write(r); err != nil {
			return fmt.Errorf("writing record: %w", err)
		}
	}
	return nil
}

// wanted reports whether a socket not tracked yet is in the cgroup subtree
// and passes the filter.
func (p *poller) wanted(m *diagMsg) (bool, error) {
	if !m.hasCgroupID && !p.warned {
		p.warned = true
		p.log.WithField(logKeyCgroup, p.scope.root).Warn("the kernel sends no INET_DIAG_CGROUP_ID " +
			"(built without CONFIG_SOCK_CGROUP_DATA?): no socket can be placed in a cgroup, " +
			"so only a cgroup2 root configuration reports flows")
	}
	if !p.scope.all {
		if !m.hasCgroupID {
			return false, nil
		}
		in, err := p.scope.contains(m.cgroupID)
		if err != nil || !in {
			return false, err
		}
	}
	if p.filter.Empty() {
		return true, nil
	}
	_, remote := m.addrs()
	return p.filter.Match(m.sport, m.dport, remote), nil
}
