// Package backends defines what a flowd backend is: something that produces
// flow.Records about the flows it selects (Filter) and writes them to a
// flow.Sink. The implementations are backends/ebpf and backends/netlink.
package backends

import (
	"context"

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
