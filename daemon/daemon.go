// Package daemon wires flowd together: config -> backends -> metrics ->
// JSON Lines output. It picks the backends, runs them side by side into one
// sink, watches their drop counters and shuts everything down in order.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/metrics"
	"github.com/flowd/flowd/sink"
)

// Log field keys.
const (
	fieldBackend    = "backend"
	fieldBackends   = "backends"
	fieldCgroup     = "cgroup"
	fieldOutput     = "output"
	fieldTCPInfo    = "tcp_info"
	fieldListen     = "listen"
	fieldDrops      = "drops"
	fieldDropsTotal = "drops_total"
	fieldTimeout    = "timeout"
)

// Defaults of the Daemon's tunables.
const (
	DefaultStatsInterval = 5 * time.Second
	DefaultStopTimeout   = 1500 * time.Millisecond
	metricsStopTimeout   = 250 * time.Millisecond
)

// Daemon runs flowd. The exported fields may be changed between New and
// Run; tests replace the backend constructors with fakes.
type Daemon struct {
	// Out receives the records. When nil, Run opens the configured
	// output.path (standard output for "-").
	Out io.Writer

	// Probe reports why the ebpf backend cannot run here (ebpf.Probe).
	Probe func() error
	// NewEBPF and NewNetlink create the backends (ebpf.New, netlink.New).
	NewEBPF    func(ebpf.Config) (backends.Backend, error)
	NewNetlink func(netlink.Config) (backends.Backend, error)

	// StatsInterval is how often drop and flow counts are read.
	StatsInterval time.Duration
	// StopTimeout bounds the wait for backends to return once the context
	// is cancelled.
	StopTimeout time.Duration

	cfg     *config.Config
	log     *logrus.Logger
	metrics *metrics.Metrics

	mu      sync.Mutex  // guards records and file, what Reopen acts on
	records *sink.JSONL // while Run runs
	file    *outputFile // while Run runs, when the output is output.path
}

// New returns a daemon for cfg that logs to log and reports version in its
// metrics. It starts nothing.
func New(cfg *config.Config, log *logrus.Logger, version string) (*Daemon, error) {
	m, err := metrics.New(version)
	if err != nil {
		return nil, err
	}
	return &Daemon{
		Probe:         ebpf.Probe,
		NewEBPF:       newEBPF,
		NewNetlink:    newNetlink,
		StatsInterval: DefaultStatsInterval,
		StopTimeout:   DefaultStopTimeout,
		cfg:           cfg,
		log:           log,
		metrics:       m,
	}, nil
}

// The constructors return a nil interface, not a typed nil, on error.
func newEBPF(c ebpf.Config) (backends.Backend, error) {
	b, err := ebpf.New(c)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func newNetlink(c netlink.Config) (backends.Backend, error) {
	b, err := netlink.New(c)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Metrics returns the daemon's metrics.
func (d *Daemon) Metrics() *metrics.Metrics { return d.metrics }

// NewLogger returns a logger for flowd's own log as c configures it.
func NewLogger(c config.Log, w io.Writer) (*logrus.Logger, error) {
	level, err := logrus.ParseLevel(c.Level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	log := logrus.New()
	log.SetOutput(w)
	log.SetLevel(level)
	switch c.Format {
	case "json":
		log.SetFormatter(&logrus.JSONFormatter{})
	default:
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	return log, nil
}

// Run records flows until ctx is cancelled or a backend fails. On the way
// out the backends finish (delivering what they hold), the output is
// flushed, the backends are closed in reverse order of creation and the
// metrics server stops. A cancelled ctx is a clean exit: Run returns nil.
func (d *Daemon) Run(ctx context.Context) (err error) {
	out, file, closeOut, err := d.openOutput()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeOut()) }()
	// Reopen works from here on (a SIGHUP while the backends load too).
	records := sink.NewJSONL(out, d.cfg.Output.TCPInfo...)
	records.SetSamples(d.cfg.Output.Samples)
	d.setOutput(records, file)
	defer d.setOutput(nil, nil) // before closeOut

	if addr := d.cfg.Metrics.Listen; addr != "" {
		srv, err := d.metrics.Listen(addr, d.log)
		if err != nil {
			return err
		}
		d.log.WithField(fieldListen, srv.Addr().String()).Info("serving metrics")
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
	// ~5 MB of garbage that a daemon at rest would otherwise keep for a
	// long time: return it to the system once, now.
	debug.FreeOSMemory()

	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.Name()
	}
	fields := logrus.Fields{
		fieldBackends: names,
		fieldCgroup:   d.cfg.Cgroup,
		fieldOutput:   d.cfg.Output.Path,
	}
	if members := d.cfg.Output.TCPInfo; len(members) > 0 {
		list := make([]string, len(members))
		for i, f := range members {
			list[i] = f.Name()
		}
		fields[fieldTCPInfo] = list // only these members are written
	}
	d.log.WithFields(fields).Info("recording flows")

	err = d.run(ctx, bs, records)
	if cerr := records.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// run runs the backends into out, through the metrics, until ctx is
// cancelled or one fails, and returns once they have all returned (or
// StopTimeout passed). Meanwhile it reads the counters. The backends flush
// out after each batch (flow.Flusher): ebpf every ebpf.flush_interval,
// when it has drained its ring buffer, netlink after each poll. One timer
// per batch, not two: an idle daemon wakes half as often.
func (d *Daemon) run(ctx context.Context, bs []backends.Backend, out *sink.JSONL) error {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := d.metrics.Sink(out)

	type result struct {
		backend backends.Backend
		err     error
	}
	results := make(chan result, len(bs))
	for _, b := range bs {
		go func() { results <- result{b, b.Run(runCtx, s)} }()
	}

	w := newWatcher(d, bs)
	w.poll() // the series exist from the start
	stats := time.NewTicker(d.StatsInterval)
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
				fail(err)
			}
		case <-stats.C:
			w.poll()
		case <-done:
			if ctx.Err() != nil {
				d.log.Info("stopping")
			}
			done = nil
			deadline = time.After(d.StopTimeout)
		case <-deadline:
			d.log.WithField(fieldTimeout, d.StopTimeout).Error("backends did not stop in time")
			fail(errors.New("backends did not stop in time"))
			running = 0
		}
	}
	w.poll() // the last drops, while the backends are still open
	return firstErr
}

// runError turns what a backend's Run returned into the daemon's error:
// nil for a clean stop after cancellation, an error otherwise.
func (d *Daemon) runError(ctx context.Context, b backends.Backend, err error) error {
	switch {
	case ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)):
		return nil
	case err != nil:
		return fmt.Errorf("%s backend: %w", b.Name(), err)
	default:
		return fmt.Errorf("%s backend stopped unexpectedly", b.Name())
	}
}

// openOutput returns where records go and how to close it; file is set
// when that is output.path, which Reopen can reopen.
func (d *Daemon) openOutput() (w io.Writer, file *outputFile, closeOut func() error, err error) {
	noClose := func() error { return nil }
	if d.Out != nil {
		return d.Out, nil, noClose, nil
	}
	if d.cfg.Output.Path == config.Stdout {
		return os.Stdout, nil, noClose, nil
	}
	f, err := openOutputFile(d.cfg.Output.Path)
	if err != nil {
		return nil, nil, nil, err
	}
	return f, f, f.Close, nil
}

// Reopen writes out the records buffered so far and reopens output.path,
// for log rotation: once the file has been renamed away, records go to a
// new file at the path. It reports false when there is nothing to reopen:
// the output is standard output (or Out), or Run has not opened it yet or
// has closed it. It is safe to call from another goroutine while Run runs
// (flowd's SIGHUP).
func (d *Daemon) Reopen() (bool, error) {
	d.mu.Lock() // held throughout: Run does not close the file meanwhile
	defer d.mu.Unlock()
	if d.file == nil {
		return false, nil
	}
	return true, d.records.Rotate(d.file.reopen)
}

// setOutput tells Reopen what Run writes to, or (nil, nil) that it is done.
func (d *Daemon) setOutput(records *sink.JSONL, file *outputFile) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.records, d.file = records, file
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

func (d *Daemon) openBackend(name string) (backends.Backend, error) {
	switch name {
	case config.BackendAuto:
		if err := d.Probe(); err != nil {
			d.log.WithError(err).Warn("ebpf backend unavailable, using netlink")
			return d.openNetlink()
		}
		b, err := d.NewEBPF(d.cfg.EBPFConfig(d.log.WithField(fieldBackend, config.BackendEBPF)))
		if err != nil {
			d.log.WithError(err).Warn("loading ebpf backend failed, using netlink")
			return d.openNetlink()
		}
		return b, nil
	case config.BackendEBPF:
		if err := d.Probe(); err != nil {
			return nil, fmt.Errorf("ebpf backend unavailable: %w", err)
		}
		b, err := d.NewEBPF(d.cfg.EBPFConfig(d.log.WithField(fieldBackend, config.BackendEBPF)))
		if err != nil {
			return nil, fmt.Errorf("loading ebpf backend: %w", err)
		}
		return b, nil
	case config.BackendNetlink:
		return d.openNetlink()
	default:
		return nil, fmt.Errorf("unknown backend %q", name)
	}
}

func (d *Daemon) openNetlink() (backends.Backend, error) {
	b, err := d.NewNetlink(d.cfg.NetlinkConfig(d.log.WithField(fieldBackend, config.BackendNetlink)))
	if err != nil {
		return nil, fmt.Errorf("starting netlink backend: %w", err)
	}
	return b, nil
}

// closeBackends closes bs in reverse order of creation.
func (d *Daemon) closeBackends(bs []backends.Backend) error {
	var errs []error
	for _, b := range slices.Backward(bs) {
		if err := b.Close(); err != nil {
			d.log.WithError(err).WithField(fieldBackend, b.Name()).Error("closing backend")
			errs = append(errs, fmt.Errorf("closing %s backend: %w", b.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// watcher reads the backends' drop and flow counters.
type watcher struct {
	d     *Daemon
	items []*watched
}

type watched struct {
	b       backends.Backend
	drops   uint64 // the total at the last poll
	lastErr string // the last error reading drops, logged once
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
	for _, it := range w.items {
		name := it.b.Name()
		if fc, ok := it.b.(backends.FlowCounter); ok {
			w.d.metrics.SetFlows(name, fc.Flows())
		}
		dc, ok := it.b.(backends.DropCounter)
		if !ok {
			continue
		}
		total, err := dc.Drops()
		if err != nil {
			if err.Error() != it.lastErr {
				w.d.log.WithError(err).WithField(fieldBackend, name).Warn("reading drop count")
				it.lastErr = err.Error()
			}
			continue
		}
		it.lastErr = ""
		if total > it.drops {
			grew := total - it.drops
			w.d.metrics.AddDrops(name, grew)
			w.d.log.WithFields(logrus.Fields{
				fieldBackend:    name,
				fieldDrops:      grew,
				fieldDropsTotal: total,
			}).Warn("records dropped: ring buffer full (raise ebpf.ringbuf_size or ebpf.interval)")
		}
		it.drops = total
	}
}
