package daemon

import (
	"errors"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics"
	"github.com/flowd/flowd/sink"
)

// An output consumes the record stream after the backends: the JSON Lines
// output now; an OTLP exporter or per-cgroup metrics would be more. Close,
// once the backends have returned, writes out what the output holds; it
// may be called more than once.
type output interface {
	flow.Sink
	Close() error
}

// A reopener is an output that writes to a file it can reopen for log
// rotation; it reports false when it has none.
type reopener interface {
	Reopen() (bool, error)
}

// outputs fans the record stream out: every output gets every record, in
// turn. It is a flow.Flusher, so that a backend's flush after a batch
// reaches the outputs that buffer.
type outputs []output

// Write writes r to every output and returns the first error.
func (o outputs) Write(r *flow.Record) error {
	var first error
	for _, out := range o {
		if err := out.Write(r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (o outputs) Flush() error {
	var err error
	for _, out := range o {
		err = errors.Join(err, flow.Flush(out))
	}
	return err
}

func (o outputs) Close() error {
	var err error
	for _, out := range o {
		err = errors.Join(err, out.Close())
	}
	return err
}

// Reopen reopens the outputs that write to files; it reports whether any
// did.
func (o outputs) Reopen() (reopened bool, err error) {
	for _, out := range o {
		if r, ok := out.(reopener); ok {
			did, rerr := r.Reopen()
			reopened, err = reopened || did, errors.Join(err, rerr)
		}
	}
	return reopened, err
}

// faultLogInterval is how often at most a fault of the output that goes on
// is logged again: a full disk fails every write and drops every record.
const faultLogInterval = 10 * time.Second

// outputFaults hears the faults of the JSON Lines output (sink.Faults): it
// counts every record lost in flowd_output_errors_total and logs a fault
// when it begins, at most once per faultLogInterval while it lasts, and
// when it ends. The output calls it under its lock, one call at a time.
type outputFaults struct {
	log     logrus.FieldLogger
	metrics *metrics.Metrics
	now     func() time.Time

	failing  bool
	loggedAt time.Time // the fault's last log line
	lost     int       // records lost since then
	lostAll  int       // records lost since the fault began
}

var _ sink.Faults = (*outputFaults)(nil)

func newOutputFaults(log logrus.FieldLogger, m *metrics.Metrics) *outputFaults {
	return &outputFaults{log: log, metrics: m, now: time.Now}
}

func (f *outputFaults) Mended(path string, n int) {
	f.log.WithField(logKeyBytes, n).Warn("the output file ended in a partial line, the rest of a write cut short: removed it before appending")
}

func (f *outputFaults) Failed(lost int, err error) {
	f.metrics.AddOutputErrors(lost)
	f.lost += lost
	f.lostAll += lost
	now := f.now()
	switch {
	case !f.failing:
		f.failing = true
		f.log.WithError(err).WithField(logKeyLost, f.lost).Errorf(
			"writing records failed; retrying every %s, holding what fits in the output's buffer and dropping the rest (counted in flowd_output_errors_total)", sink.RetryInterval)
	case now.Sub(f.loggedAt) >= faultLogInterval:
		f.log.WithError(err).WithFields(logrus.Fields{logKeyLost: f.lost, logKeyLostTotal: f.lostAll}).Warn("writing records still fails")
	default:
		return
	}
	f.loggedAt = now
	f.lost = 0
}

func (f *outputFaults) Resumed() {
	f.log.WithField(logKeyLostTotal, f.lostAll).Warn("writing records again")
	f.failing, f.lost, f.lostAll = false, 0, 0
}
