package daemon

import (
	"errors"

	"github.com/flowd/flowd/flow"
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
