// Package daemon runs flowd: it checks what the configuration names on this
// machine, starts the backends, names the cgroup of each of their records
// and sends it through the metrics' counters to the outputs, watches the
// backends' counters and shuts everything down in order.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	cebpf "github.com/cilium/ebpf"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics"
	"github.com/flowd/flowd/metrics/tcpstats"
	"github.com/flowd/flowd/otlp"
	"github.com/flowd/flowd/otlp/otlpconfig"
	"github.com/flowd/flowd/sink"
)

// Log field keys.
const (
	logKeyBackend    = "backend"
	logKeyBackends   = "backends"
	logKeyCgroup     = "cgroup"
	logKeyOutput     = "output"
	logKeyOTLP       = "otlp"
	logKeyTCPInfo    = "tcp_info"
	logKeyEvents     = "events"
	logKeyListen     = "listen"
	logKeyDrops      = "drops"
	logKeyDropsTotal = "drops_total"
	logKeyTimeout    = "timeout"
	logKeyBytes      = "bytes"
	logKeyLost       = "lost"       // records an output lost since the last line about it
	logKeyLostTotal  = "lost_total" // records an output lost since it began to fail
)

const (
	statsInterval      = 5 * time.Second         // how often the backends' counters are read
	stopTimeout        = 1500 * time.Millisecond // how long Run waits for the backends once stopped
	metricsStopTimeout = 250 * time.Millisecond
)

// Daemon runs flowd as a Config describes it.
type Daemon struct {
	cfg     *config.Config
	version string
	cgroup  string       // cfg.Cgroup, resolved
	samples sink.Samples // cfg.Output.Samples
	log     *logrus.Logger
	metrics *metrics.Metrics
	names   *cgroup.Names        // the paths of the cgroups of the subtree
	tcp     *tcpstats.Aggregator // the TCP metrics, an output; nil without metrics.listen or their push over OTLP

	// What the tests replace.
	probe         func() error // why the ebpf backend cannot run here
	enableStats   func() (io.Closer, error)
	newEBPF       func(ebpf.Config) (backends.Backend, error)
	newNetlink    func(netlink.Config) (backends.Backend, error)
	out           io.Writer // when set, the records go here, not to output.path
	statsInterval time.Duration
	stopTimeout   time.Duration

	mu      sync.Mutex // guards outputs, what Reopen acts on
	outputs outputs    // while Run runs
}

// New returns a daemon for cfg that logs to log and reports version in its
// metrics. It checks that the cgroup and the network namespace cfg names
// are there, with errors that match config.ErrInvalid, and starts nothing.
func New(cfg *config.Config, log *logrus.Logger, version string) (*Daemon, error) {
	dir, err := cgroup.Resolve(cfg.Cgroup)
	if err != nil {
		root := ""
		if cfg.Cgroup == "" {
			root = " (the cgroup2 root)"
		}
		return nil, cfg.Invalid("cgroup", err, "%q%s is not usable", cfg.Cgroup, root)
	}
	if err := checkNetns(cfg); err != nil {
		return nil, err
	}
	samples := sink.SamplesFull
	if cfg.Output.Samples == "changes" {
		samples = sink.SamplesChanges
	}
	mount, err := cgroup.Mount()
	if err != nil {
		return nil, cfg.Invalid("cgroup", err, "%q: no cgroup2 mount", cfg.Cgroup)
	}
	m, err := metrics.New(version)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		cfg:           cfg,
		version:       version,
		cgroup:        dir,
		samples:       samples,
		log:           log,
		metrics:       m,
		names:         cgroup.NewNames(mount, dir),
		probe:         ebpf.Probe,
		enableStats:   func() (io.Closer, error) { return cebpf.EnableStats(unix.BPF_STATS_RUN_TIME) },
		newEBPF:       func(c ebpf.Config) (backends.Backend, error) { return backend(ebpf.New(c)) },
		newNetlink:    func(c netlink.Config) (backends.Backend, error) { return backend(netlink.New(c)) },
		statsInterval: statsInterval,
		stopTimeout:   stopTimeout,
	}
	// The TCP metrics are computed when something reads them: the
	// endpoint, or the push over OTLP.
	if cfg.Metrics.Listen != "" || cfg.Output.OTLP.MetricsEnabled() {
		d.tcp = tcpstats.New(d.tcpConfig())
		m.RegisterTCP(d.tcp, tcpstats.By(cfg.Metrics.By))
	}
	return d, nil
}

// tcpConfig turns the configuration into the TCP metrics'.
func (d *Daemon) tcpConfig() tcpstats.Config {
	c := d.cfg.Metrics
	cfg := tcpstats.Config{
		Names:      d.names,
		MaxCgroups: c.MaxCgroups,
		By:         tcpstats.By(c.By),
		IPv4Bits:   c.ByIPv4Prefix,
		IPv6Bits:   c.ByIPv6Prefix,
		MaxBy:      c.MaxBy,
	}
	if c.PerFlow {
		cfg.TopFlows = c.MaxFlows
	}
	return cfg
}

// backend returns b as a Backend: a nil interface, not a typed nil, on error.
func backend[B backends.Backend](b B, err error) (backends.Backend, error) {
	if err != nil {
		return nil, err
	}
	return b, nil
}

// checkNetns checks that netlink.netns, when set, is a network namespace
// file.
func checkNetns(cfg *config.Config) error {
	path := cfg.Netlink.Netns
	if path == "" {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return cfg.Invalid("netlink.netns", err, "%q", path)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		return cfg.Invalid("netlink.netns", nil, "%q is not a network namespace file (e.g. /run/netns/NAME or /proc/PID/ns/net)", path)
	}
	return nil
}

// NewLogger returns a logger for flowd's own log as c configures it.
func NewLogger(c config.Log, w io.Writer) (*logrus.Logger, error) {
	level, err := logrus.ParseLevel(string(c.Level))
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	log := logrus.New()
	log.SetOutput(w)
	log.SetLevel(level)
	if c.Format == "json" {
		log.SetFormatter(&logrus.JSONFormatter{})
	} else {
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	return log, nil
}

// Run records flows until ctx is cancelled or a backend fails. On the way
// out the backends finish (delivering what they hold), the outputs write
// out what they buffer, the backends are closed in reverse order of
// creation and the metrics server stops. A cancelled ctx is a clean exit:
// Run returns nil.
func (d *Daemon) Run(ctx context.Context) (err error) {
	// The outputs first: an output.path that cannot be written fails
	// before anything is attached, as a configuration error.
	outs, err := d.openOutputs()
	if err != nil {
		return err
	}
	d.setOutputs(outs) // Reopen works from here on (a SIGHUP while the backends load too)
	defer func() { err = errors.Join(err, d.closeOutputs(outs)) }()

	// The statistics before the endpoint: a kernel that refuses them is a
	// configuration error, reported alone, with nothing served meanwhile.
	if stats, err := d.enableBPFStats(); err != nil {
		return err
	} else if stats != nil {
		defer stats.Close()
	}

	if addr := d.cfg.Metrics.Listen; addr != "" {
		srv, err := d.metrics.Listen(addr, metrics.DefaultServerOptions, d.log)
		if err != nil {
			return d.listenError(addr, err)
		}
		d.log.WithField(logKeyListen, srv.Addr().String()).Info("serving metrics")
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), metricsStopTimeout)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				d.log.WithError(err).Warn("stopping metrics server")
			}
		}()
	}

	bs, err := d.openBackends()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, d.closeBackends(bs)) }()
	// Loading the BPF object (the kernel's BTF decoded for CO-RE) leaves
	// garbage that a daemon at rest would keep for a long time: return it
	// to the system once, now (docs/performance.md, "Memory").
	debug.FreeOSMemory()

	fields := logrus.Fields{logKeyBackends: backendNames(bs), logKeyCgroup: d.cgroup, logKeyOutput: d.cfg.Output.Path}
	if c := d.cfg.Output.OTLP; c.Enabled() {
		fields[logKeyOTLP] = c.Endpoint
	}
	if members := d.cfg.Output.TCPInfo; len(members) > 0 {
		list := make([]string, len(members))
		for i, f := range members {
			list[i] = f.Name()
		}
		fields[logKeyTCPInfo] = list // only these members are written
	}
	if events := d.cfg.Output.Events; len(events) < len(config.Default().Output.Events) {
		list := make([]string, len(events))
		for i, e := range events {
			list[i] = e.String()
		}
		fields[logKeyEvents] = list // only these records are written
	}
	d.log.WithFields(fields).Info("recording flows")

	err = d.run(ctx, bs, cgroupNamer{d.names, d.metrics.Sink(outs)})
	// The outputs write out what they hold before the backends are closed.
	return errors.Join(err, d.closeOutputs(outs))
}

// listenError is the error of a metrics.listen that could not be bound: a
// configuration error, which a restart cannot mend (an address not on this
// host, a port flowd may not bind, a name that does not resolve), unless
// waiting may (the port is in use, the resolver failed for now).
func (d *Daemon) listenError(addr string, err error) error {
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		return err
	case errors.As(err, &dnsErr) && !dnsErr.IsNotFound:
		return err
	}
	cause := err
	if opErr := (*net.OpError)(nil); errors.As(err, &opErr) {
		cause = opErr.Err // without the address, which the message has
	}
	return d.cfg.Invalid("metrics.listen", cause, "%q cannot be bound on this host", addr)
}

// enableBPFStats has the kernel count the runs and run time of BPF
// programs while flowd runs, when metrics.bpf_stats asks for it and a
// backend may run BPF programs. Closing what it returns stops that.
func (d *Daemon) enableBPFStats() (io.Closer, error) {
	c := d.cfg
	if !c.Metrics.BPFStats || c.Metrics.Listen == "" ||
		!slices.ContainsFunc(c.Backends, func(b config.Backend) bool { return b == config.BackendAuto || b == flow.BackendEBPF }) {
		return nil, nil
	}
	closer, err := d.enableStats()
	if err != nil {
		return nil, c.Invalid("metrics.bpf_stats", err, "the kernel's BPF statistics cannot be enabled (BPF_ENABLE_STATS needs CAP_SYS_ADMIN and Linux 5.8)")
	}
	return closer, nil
}

// run runs the backends into s until ctx is cancelled or one fails, and
// returns once they have all returned (or stopTimeout passed). Meanwhile it
// reads the counters. The backends flush s after each batch (flow.Flusher):
// ebpf every ebpf.flush_interval, when it has drained its ring buffer,
// netlink after each poll. One timer per batch, not two: an idle daemon
// wakes half as often.
func (d *Daemon) run(ctx context.Context, bs []backends.Backend, s flow.Sink) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()

	type result struct {
		backend backends.Backend
		err     error
	}
	results := make(chan result, len(bs))
	for _, b := range bs {
		go func() { results <- result{b, b.Run(runCtx, s)} }()
	}
	health := d.metrics.Health()
	health.Running(backendNames(bs)...)

	w := newWatcher(d, bs)
	w.poll() // the series exist from the start
	stats := time.NewTicker(d.statsInterval)
	defer stats.Stop()

	var (
		firstErr error
		done     = runCtx.Done()
		deadline <-chan time.Time
	)
	fail := func(err error) {
		if firstErr == nil {
			firstErr = err
		}
		cancel()
	}
	for running := len(bs); running > 0; {
		select {
		case r := <-results:
			running--
			if err := d.runError(runCtx, r.backend, r.err); err != nil {
				cause := r.err
				if cause == nil {
					cause = errors.New("stopped unexpectedly")
				}
				health.Failed(r.backend.Name(), cause)
				fail(err)
			}
		case <-stats.C:
			w.poll()
		case <-done:
			health.Stopping()
			if ctx.Err() != nil {
				d.log.Info("stopping")
			}
			done = nil
			deadline = time.After(d.stopTimeout)
		case <-deadline:
			d.log.WithField(logKeyTimeout, d.stopTimeout).Error("backends did not stop in time")
			fail(errors.New("backends did not stop in time"))
			running = 0
		}
	}
	w.poll() // the last drops, while the backends are still open
	return firstErr
}

func backendNames(bs []backends.Backend) []string {
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.Name()
	}
	return names
}

// runError turns what a backend's Run returned into the daemon's error:
// nil for a clean stop after cancellation, an error otherwise.
func (d *Daemon) runError(ctx context.Context, b backends.Backend, err error) error {
	switch {
	case ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)):
		return nil
	case errors.Is(err, backends.ErrCgroupRemoved):
		return fmt.Errorf("%s backend: %w (cgroup_removed is %s)", b.Name(), err, config.CgroupRemovedExit)
	case err != nil:
		return fmt.Errorf("%s backend: %w", b.Name(), err)
	default:
		return fmt.Errorf("%s backend stopped unexpectedly", b.Name())
	}
}

// openOutputs opens what the records go to: the JSON Lines output (unless
// output.path is none), the TCP metrics when they are computed, and the
// OTLP export with output.otlp.endpoint.
func (d *Daemon) openOutputs() (outputs, error) {
	var outs outputs
	if d.cfg.Output.Path != config.PathNone {
		records, err := d.openRecords()
		if err != nil {
			return nil, err
		}
		outs = append(outs, records)
	}
	if d.tcp != nil {
		outs = append(outs, d.tcp)
	}
	if d.cfg.Output.OTLP.Enabled() {
		e, err := d.openOTLP()
		if err != nil {
			return nil, errors.Join(err, outs.Close())
		}
		outs = append(outs, e)
	}
	return outs, nil
}

// openRecords opens the JSON Lines output.
func (d *Daemon) openRecords() (*sink.JSONL, error) {
	c := d.cfg.Output
	faults := newOutputFaults(d.log.WithField(logKeyOutput, c.Path), d.metrics)
	var records *sink.JSONL
	if d.out != nil {
		records = sink.NewJSONL(d.out, c.TCPInfo...)
		records.SetFaults(faults)
	} else {
		var err error
		records, err = sink.Open(c.Path, sink.Options{
			FileOptions: sink.FileOptions{Mode: os.FileMode(c.Mode), FollowSymlinks: c.FollowSymlinks},
			Members:     c.TCPInfo,
			Faults:      faults,
		})
		switch {
		case errors.Is(err, sink.ErrSymlink):
			return nil, d.cfg.Invalid("output.path", nil, "%q is a symbolic link, which flowd does not follow unless output.follow_symlinks is true", c.Path)
		case err != nil:
			return nil, d.cfg.Invalid("output.path", err, "%q is not writable", c.Path)
		}
	}
	records.SetSamples(d.samples)
	// Only the outputs of records (this and the OTLP export) leave events
	// out: the metrics count every record.
	records.SetEvents(c.Events...)
	return records, nil
}

// openOTLP starts the OTLP export of the records and, when they are
// computed, of the TCP metrics, and has the metrics endpoint serve its
// counters. It does not wait for the collector.
func (d *Daemon) openOTLP() (*otlp.Exporter, error) {
	c := d.cfg.Output
	host, err := os.Hostname()
	if err != nil {
		d.log.WithError(err).Warn("host name unknown: the OTLP resource has no host.name")
	}
	opts := otlp.Options{
		Resource:    otlp.Resource{HostName: host, Version: d.version},
		Members:     c.TCPInfo,
		Events:      c.Events,
		Log:         d.log,
		LogInterval: d.statsInterval,
	}
	if c.OTLP.MetricsEnabled() {
		opts.TCP, opts.TCPBy = d.tcp, tcpstats.By(d.cfg.Metrics.By)
	}
	e, err := otlp.New(c.OTLP, opts)
	if ce := (*otlpconfig.Error)(nil); errors.As(err, &ce) {
		return nil, d.cfg.Invalid(ce.Key, ce.Err, "%s", ce.Msg) // a TLS file that cannot be read
	} else if err != nil {
		return nil, fmt.Errorf("starting the OTLP export: %w", err)
	}
	if err := d.metrics.RegisterOTLP(e.Stats); err != nil {
		return nil, errors.Join(err, e.Close())
	}
	return e, nil
}

// closeOutputs closes outs; Reopen has nothing to act on from then on.
func (d *Daemon) closeOutputs(outs outputs) error {
	d.setOutputs(nil)
	return outs.Close()
}

func (d *Daemon) setOutputs(outs outputs) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.outputs = outs
}

// Reopen reopens the output files, for log rotation (SIGHUP): what is
// buffered goes to the file renamed away, what follows to a new file at
// output.path. It reports false when no output is a file, or Run is not
// running. It is safe to call while Run runs.
func (d *Daemon) Reopen() (bool, error) {
	d.mu.Lock() // held throughout: Run does not close the outputs meanwhile
	defer d.mu.Unlock()
	return d.outputs.Reopen()
}

// openBackends creates the configured backends. When one fails, those
// already created are closed again.
func (d *Daemon) openBackends() ([]backends.Backend, error) {
	var bs []backends.Backend
	for _, name := range d.cfg.Backends {
		b, err := d.openBackend(name)
		if err != nil {
			return nil, errors.Join(err, d.closeBackends(bs))
		}
		bs = append(bs, b)
	}
	return bs, nil
}

func (d *Daemon) openBackend(name config.Backend) (backends.Backend, error) {
	switch name {
	case config.BackendAuto:
		if err := d.probe(); err != nil {
			d.log.WithError(err).Warn("ebpf backend unavailable, using netlink")
			return d.openNetlink()
		}
		b, err := d.newEBPF(d.ebpfConfig())
		if err != nil {
			d.log.WithError(err).Warn("loading ebpf backend failed, using netlink")
			return d.openNetlink()
		}
		return b, nil
	case flow.BackendEBPF:
		if err := d.probe(); err != nil {
			return nil, fmt.Errorf("ebpf backend unavailable: %w", err)
		}
		b, err := d.newEBPF(d.ebpfConfig())
		if err != nil {
			return nil, fmt.Errorf("loading ebpf backend: %w", err)
		}
		return b, nil
	case flow.BackendNetlink:
		return d.openNetlink()
	default:
		return nil, fmt.Errorf("unknown backend %q", name)
	}
}

func (d *Daemon) openNetlink() (backends.Backend, error) {
	b, err := d.newNetlink(d.netlinkConfig())
	if err != nil {
		return nil, fmt.Errorf("starting netlink backend: %w", err)
	}
	return b, nil
}

// ebpfConfig and netlinkConfig turn the configuration into the backends'.
func (d *Daemon) ebpfConfig() ebpf.Config {
	c := d.cfg.EBPF
	return ebpf.Config{
		Cgroup:          d.cgroup,
		Mode:            ebpf.Mode(c.Mode),
		Interval:        c.Interval,
		IdleInterval:    c.IdleInterval,
		MaxFlows:        c.MaxFlows,
		RingbufSize:     c.RingbufSize,
		FlushInterval:   c.FlushInterval,
		Filter:          d.filter(),
		Members:         d.members(),
		StopWhenRemoved: d.cfg.CgroupRemoved == config.CgroupRemovedExit,
		Log:             d.log.WithField(logKeyBackend, flow.BackendEBPF),
	}
}

// members are the tcp_info members the ebpf backend reads: those of the
// output, and those the TCP metrics are made of; none = every member.
func (d *Daemon) members() []flow.Field {
	out := d.cfg.Output.TCPInfo
	if len(out) == 0 || d.tcp == nil {
		return slices.Clone(out)
	}
	return slices.Collect(flow.MaskOf(out...).Or(flow.MaskOf(tcpstats.Members...)).Fields())
}

func (d *Daemon) netlinkConfig() netlink.Config {
	return netlink.Config{
		Cgroup:          d.cgroup,
		Interval:        d.cfg.Netlink.Interval,
		Netns:           d.cfg.Netlink.Netns,
		Filter:          d.filter(),
		StopWhenRemoved: d.cfg.CgroupRemoved == config.CgroupRemovedExit,
		Log:             d.log.WithField(logKeyBackend, flow.BackendNetlink),
	}
}

// filter returns the flow filter, in slices of its own.
func (d *Daemon) filter() backends.Filter {
	f := d.cfg.Filter
	ports := func(ps []config.Port) []uint16 {
		out := make([]uint16, len(ps))
		for i, p := range ps {
			out[i] = uint16(p)
		}
		return out
	}
	return backends.Filter{LocalPorts: ports(f.LocalPorts), RemotePorts: ports(f.RemotePorts), RemoteCIDRs: slices.Clone(f.RemoteCIDRs)}
}

// closeBackends closes bs in reverse order of creation.
func (d *Daemon) closeBackends(bs []backends.Backend) error {
	var errs []error
	for _, b := range slices.Backward(bs) {
		if err := b.Close(); err != nil {
			d.log.WithError(err).WithField(logKeyBackend, b.Name()).Error("closing backend")
			errs = append(errs, fmt.Errorf("closing %s backend: %w", b.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// watcher reads the backends' counters and states: drops, flows, their
// cgroup's, the ring buffer's backlog, dumps and, with metrics.bpf_stats,
// their BPF programs'.
type watcher struct {
	d     *Daemon
	items []*watched
}

type watched struct {
	b           backends.Backend
	drops       uint64 // the total at the last poll
	dumpsFailed uint64 // the total at the last poll
	removals    uint64 // the cgroup removals at the last poll
	lastErr     string // the last error reading drops, logged once
	programErr  string // the last error reading program statistics, logged once
}

func newWatcher(d *Daemon, bs []backends.Backend) *watcher {
	w := &watcher{d: d}
	for _, b := range bs {
		w.items = append(w.items, &watched{b: b})
		if _, ok := b.(backends.DropCounter); ok {
			d.metrics.AddDrops(b.Name(), 0)
		}
	}
	return w
}

// poll logs a warning for every backend whose drop count grew and updates
// the metrics.
func (w *watcher) poll() {
	m := w.d.metrics
	for _, it := range w.items {
		name := it.b.Name()
		if fc, ok := it.b.(backends.FlowCounter); ok {
			m.SetFlows(name, fc.Flows())
		} else if w.d.tcp != nil {
			m.SetFlows(name, w.d.tcp.Tracked(name))
		}
		if cf, ok := it.b.(backends.CgroupFollower); ok {
			st := cf.CgroupState()
			m.SetCgroup(name, st.Attached, st.Removals-it.removals)
			it.removals = st.Removals
			waiting := ""
			if !st.Attached {
				waiting = st.String()
			}
			m.Health().Waiting(name, waiting)
		}
		if uc, ok := it.b.(backends.UnreadCounter); ok {
			unread, size := uc.Unread()
			m.SetUnread(name, unread, size)
		}
		if dr, ok := it.b.(backends.DumpReporter); ok {
			st := dr.Dumps()
			m.AddDumps(name, st.Durations, st.Failed-it.dumpsFailed)
			it.dumpsFailed = st.Failed
		}
		if pr, ok := it.b.(backends.ProgramReporter); ok && w.d.cfg.Metrics.BPFStats {
			w.pollPrograms(it, pr)
		}
		if dc, ok := it.b.(backends.DropCounter); ok {
			w.pollDrops(it, dc)
		}
	}
}

func (w *watcher) pollPrograms(it *watched, pr backends.ProgramReporter) {
	stats, err := pr.Programs()
	if err != nil {
		if err.Error() != it.programErr {
			w.d.log.WithError(err).WithField(logKeyBackend, it.b.Name()).Warn("reading BPF program statistics")
			it.programErr = err.Error()
		}
		return
	}
	it.programErr = ""
	w.d.metrics.SetPrograms(it.b.Name(), stats)
}

func (w *watcher) pollDrops(it *watched, dc backends.DropCounter) {
	name := it.b.Name()
	total, err := dc.Drops()
	if err != nil {
		if err.Error() != it.lastErr {
			w.d.log.WithError(err).WithField(logKeyBackend, name).Warn("reading drop count")
			it.lastErr = err.Error()
		}
		return
	}
	it.lastErr = ""
	if total > it.drops {
		grew := total - it.drops
		w.d.metrics.AddDrops(name, grew)
		w.d.log.WithFields(logrus.Fields{
			logKeyBackend:    name,
			logKeyDrops:      grew,
			logKeyDropsTotal: total,
		}).Warn("records dropped: ring buffer full (raise ebpf.ringbuf_size or ebpf.interval)")
	}
	it.drops = total
}
