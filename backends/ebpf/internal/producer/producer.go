// Package producer is a synthetic source of flowd records for benchmarks:
// a BPF program (bpf/bench_producer.bpf.c) that writes one realistic
// struct flowd_record into a ring buffer each time it runs, with the
// wakeup policy and the drop counter of flowd's own program. It writes
// into the maps of a loaded flowd program, so that the records go through
// the real ring buffer to the real reader. It is run with
// BPF_PROG_TEST_RUN, many times per syscall, on the calling thread's CPU.
package producer

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// Config says where the producer writes.
type Config struct {
	Events      *ebpf.Map // flowd's ring buffer
	Drops       *ebpf.Map // flowd's drop counter
	WakeupBytes uint64    // flowd's wakeup watermark: force a wakeup past this much unread data
	Flows       uint32    // how many flows (cookies) the records are spread over; 0 means 1024
}

// Producer runs the producer program.
type Producer struct {
	objs producerObjects
}

// New loads the producer program so that it writes into cfg.Events and
// counts drops in cfg.Drops. Nothing stays loaded when it fails.
func New(cfg Config) (*Producer, error) {
	if cfg.Events == nil || cfg.Drops == nil {
		return nil, errors.New("producer needs the events and drops maps")
	}
	if cfg.Flows == 0 {
		cfg.Flows = 1024
	}
	spec, err := loadProducer()
	if err != nil {
		return nil, fmt.Errorf("loading producer spec: %w", err)
	}
	for name, v := range map[string]any{"wakeup_bytes": cfg.WakeupBytes, "flows": cfg.Flows} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("setting %s: %w", name, err)
		}
	}
	// A replacement map must match its spec: the ring buffer's size is
	// flowd's, not the one in the object.
	spec.Maps["events"].MaxEntries = cfg.Events.MaxEntries()
	p := &Producer{}
	err = spec.LoadAndAssign(&p.objs, &ebpf.CollectionOptions{
		MapReplacements: map[string]*ebpf.Map{"events": cfg.Events, "drops": cfg.Drops},
	})
	if err != nil {
		return nil, fmt.Errorf("loading producer: %w", err)
	}
	return p, nil
}

// packet is the smallest input a tc program can be run on: an Ethernet
// header's worth of bytes. The producer does not read it.
var packet = make([]byte, 14)

// Run runs the program n times in a row with one BPF_PROG_TEST_RUN, on
// the CPU of the calling thread: it writes n records, or counts drops.
// The kernel may interrupt a run for a signal, which cilium/ebpf then
// restarts: count what was produced with Runs, not with n.
func (p *Producer) Run(n uint32) error {
	if n == 0 {
		return nil
	}
	if _, err := p.objs.Produce.Run(&ebpf.RunOptions{Data: packet, Repeat: n}); err != nil {
		return fmt.Errorf("running producer: %w", err)
	}
	return nil
}

// Runs returns how many times the program ran, on all CPUs: the records it
// wrote plus the ones it counted as dropped.
func (p *Producer) Runs() (uint64, error) {
	var perCPU []uint64
	if err := p.objs.Runs.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("reading run counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// Close unloads the program. The maps it writes into are clones of
// flowd's: flowd's stay open.
func (p *Producer) Close() error {
	return p.objs.Close()
}
