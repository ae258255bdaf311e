package ebpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
)

// Probe reports why the ebpf backend cannot run on this host, or nil when
// it can: the kernel must have BTF, sockops and syscall programs, ring
// buffers, socket storage, queues and the helpers the programs call, and
// the process the privileges to load them. Loading the programs checks the
// rest (Linux 5.15 or newer).
func Probe() error {
	if _, err := btf.LoadKernelSpec(); err != nil {
		return fmt.Errorf("kernel BTF is not available (/sys/kernel/btf/vmlinux): %w", err)
	}
	checks := []struct {
		what string
		err  error
	}{
		{"sockops programs", features.HaveProgramType(ebpf.SockOps)},
		{"syscall programs", features.HaveProgramType(ebpf.Syscall)},
		{"ring buffer maps", features.HaveMapType(ebpf.RingBuf)},
		{"socket storage maps", features.HaveMapType(ebpf.SkStorage)},
		{"queue maps", features.HaveMapType(ebpf.Queue)},
		// In sockops programs since 5.10 (5.9 had it for tracing only).
		{"bpf_skc_to_tcp_sock in sockops programs", features.HaveProgramHelper(ebpf.SockOps, asm.FnSkcToTcpSock)},
		{"bpf_sk_storage_get in sockops programs", features.HaveProgramHelper(ebpf.SockOps, asm.FnSkStorageGet)},
		{"bpf_ringbuf_reserve in sockops programs", features.HaveProgramHelper(ebpf.SockOps, asm.FnRingbufReserve)},
		{"bpf_for_each_map_elem in syscall programs", features.HaveProgramHelper(ebpf.Syscall, asm.FnForEachMapElem)},
	}
	for _, c := range checks {
		if c.err == nil {
			continue
		}
		if errors.Is(c.err, ebpf.ErrNotSupported) {
			return fmt.Errorf("the kernel does not support %s: %w", c.what, c.err)
		}
		return fmt.Errorf("probing %s (is flowd root or has CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN?): %w", c.what, c.err)
	}
	return nil
}
