package daemon

import (
	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
)

// cgroupNamer fills in each record's cgroup path from its cgroup id, then
// hands it on. It runs once, before the records fan out, so that every
// output (the JSON Lines file, metrics by cgroup, an exporter) sees the
// same name, and no backend needs to know cgroup paths.
type cgroupNamer struct {
	names *cgroup.Names
	next  flow.Sink
}

// Write sets r.Cgroup, to "" when the id is not (yet) known: the backends
// may reuse r for the next record, which must not keep this one's path.
func (n cgroupNamer) Write(r *flow.Record) error {
	r.Cgroup, _ = n.names.Path(r.CgroupID)
	return n.next.Write(r)
}

func (n cgroupNamer) Flush() error { return flow.Flush(n.next) }
