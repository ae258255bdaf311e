package ebpf

import (
	"fmt"
	"reflect"

	"github.com/cilium/ebpf"

	"github.com/flowd/flowd/backends"
)

// Unread returns the bytes of records in the ring buffer not read yet, and
// its size; 0, 0 once the backend is closed.
func (b *Backend) Unread() (unread, size int) {
	b.statsMu.RLock()
	defer b.statsMu.RUnlock()
	if b.closed {
		return 0, 0
	}
	return b.reader.AvailableBytes(), b.reader.BufferSize()
}

// Programs returns the kernel's statistics of every program the backend
// loaded, by its name in the object: programs added to it show up without
// more code.
func (b *Backend) Programs() ([]backends.ProgramStats, error) {
	b.statsMu.RLock()
	defer b.statsMu.RUnlock()
	if b.closed {
		return nil, nil
	}
	var out []backends.ProgramStats
	v := reflect.ValueOf(b.objs.bpfPrograms)
	for i := range v.NumField() {
		prog, ok := v.Field(i).Interface().(*ebpf.Program)
		if !ok || prog == nil {
			continue
		}
		name := v.Type().Field(i).Tag.Get("ebpf")
		st, err := prog.Stats()
		if err != nil {
			return nil, fmt.Errorf("reading statistics of BPF program %s: %w", name, err)
		}
		out = append(out, backends.ProgramStats{Name: name, Runs: st.RunCount, RunTime: st.Runtime, RecursionMisses: st.RecursionMisses})
	}
	return out, nil
}
