package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// sockopsProgram opens the sockops program attached to the cgroup (flowd's:
// the suite's cgroups have no other).
func sockopsProgram(cg *tempCgroup) (*ebpf.Program, error) {
	res, err := link.QueryPrograms(link.QueryOptions{Target: cg.fd, Attach: ebpf.AttachCGroupSockOps})
	if err != nil {
		return nil, fmt.Errorf("querying sockops programs of %s: %w", cg.path, err)
	}
	if len(res.Programs) != 1 {
		return nil, fmt.Errorf("%d sockops programs attached to %s, want 1", len(res.Programs), cg.path)
	}
	p, err := ebpf.NewProgramFromID(res.Programs[0].ID)
	if err != nil {
		return nil, fmt.Errorf("opening program %d: %w", res.Programs[0].ID, err)
	}
	return p, nil
}

// flowdPrograms opens the programs of the flowd attached to the cgroup
// that run outside the daemon: its sockops program, and those that share
// its ring buffer, but for the walk that samples the flows (a syscall
// program: it runs in the daemon's own system calls, so its run time is in
// the daemon's CPU time already).
func flowdPrograms(cg *tempCgroup) (programs, error) {
	sockops, err := sockopsProgram(cg)
	if err != nil {
		return nil, err
	}
	progs := programs{sockops}
	info, err := sockops.Info()
	if err != nil {
		progs.Close()
		return nil, fmt.Errorf("reading program info: %w", err)
	}
	maps, _ := info.MapIDs()
	events := ebpf.MapID(0)
	for _, id := range maps {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if mi, err := m.Info(); err == nil && mi.Type == ebpf.RingBuf {
			events = id
		}
		m.Close()
	}
	own, _ := info.ID()
	for id := ebpf.ProgramID(0); ; {
		if id, err = ebpf.ProgramGetNextID(id); err != nil {
			break
		}
		if id == own {
			continue
		}
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		pi, err := p.Info()
		ids, _ := pi.MapIDs()
		if err != nil || !slices.Contains(ids, events) || pi.Type == ebpf.Syscall {
			p.Close()
			continue
		}
		progs = append(progs, p)
	}
	return progs, nil
}

// programs are the programs of one flowd.
type programs []*ebpf.Program

func (ps programs) Close() error {
	for _, p := range ps {
		p.Close()
	}
	return nil
}

// stats sums the programs' run counts and run times.
func (ps programs) stats() (progStats, error) {
	var sum progStats
	for _, p := range ps {
		s, err := readProgStats(p)
		if err != nil {
			return progStats{}, err
		}
		sum.runs += s.runs
		sum.runtime += s.runtime
	}
	return sum, nil
}

// enableBPFStats turns on the kernel's BPF run time statistics
// (kernel.bpf_stats_enabled) until the returned Closer is closed.
func enableBPFStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enabling BPF statistics: %w", err)
	}
	return c, nil
}

// progStats reads a program's run count and run time.
type progStats struct {
	runs    uint64
	runtime time.Duration
}

func readProgStats(p *ebpf.Program) (progStats, error) {
	s, err := p.Stats()
	if err != nil {
		return progStats{}, fmt.Errorf("reading program statistics: %w", err)
	}
	return progStats{runs: s.RunCount, runtime: s.Runtime}, nil
}

// bpfCost is what the sockops program cost between two readings.
type bpfCost struct {
	runsPerSec float64
	nsPerRun   float64 // NaN when it did not run
	cpu        float64 // run time per wall second (CPU-s/s)
}

func cost(before, after progStats, wall time.Duration) bpfCost {
	runs := float64(after.runs - before.runs)
	rt := after.runtime - before.runtime
	c := bpfCost{runsPerSec: runs / wall.Seconds(), cpu: rt.Seconds() / wall.Seconds(), nsPerRun: math.NaN()}
	if runs > 0 {
		c.nsPerRun = float64(rt.Nanoseconds()) / runs
	}
	return c
}

// programMaps returns the maps of the program attached to cg and the
// kernel memory charged for each (bytes_memlock in bpftool map show).
func programMaps(cg *tempCgroup) ([]MapMem, uint64, error) {
	p, err := sockopsProgram(cg)
	if err != nil {
		return nil, 0, err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return nil, 0, fmt.Errorf("reading program info: %w", err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return nil, 0, errors.New("the kernel does not report the program's maps")
	}
	var (
		out   []MapMem
		total uint64
	)
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, 0, fmt.Errorf("opening map %d: %w", id, err)
		}
		mi, err := m.Info()
		m.Close()
		if err != nil {
			return nil, 0, fmt.Errorf("reading map %d info: %w", id, err)
		}
		ml, _ := mi.Memlock()
		out = append(out, MapMem{Name: mi.Name, Type: mi.Type.String(), Memlock: ml})
		total += ml
	}
	return out, total, nil
}
