package ebpf

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Probe reports why the ebpf backend cannot run on this host, or nil when
// it can: the kernel must have BTF, sockops and syscall programs, ring
// buffers, socket storage, queues and the helpers the programs call, and
// the process the capabilities to load them. Loading the programs checks
// the rest (Linux 5.15 or newer). A missing capability is named as such:
// without it the kernel's verifier hides helpers, which would otherwise
// read as a kernel that lacks them.
func Probe() error {
	if _, err := btf.LoadKernelSpec(); err != nil {
		return fmt.Errorf("kernel BTF is not available (/sys/kernel/btf/vmlinux): %w", err)
	}
	if err := checkCapabilities(); err != nil {
		return err
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
		return fmt.Errorf("probing %s: %w", c.what, c.err)
	}
	return nil
}

// capability is one the backend needs, and what for.
type capability struct {
	name string
	bit  uint
	why  string
}

// The capabilities the backend needs. CAP_SYS_ADMIN stands in for CAP_BPF
// and CAP_PERFMON, as the kernel's bpf_capable() and perfmon_capable() allow.
var (
	capBPF         = capability{"CAP_BPF", unix.CAP_BPF, "loading BPF programs and maps"}
	capPerfmon     = capability{"CAP_PERFMON", unix.CAP_PERFMON, "reads through BTF pointers: bpf_skc_to_tcp_sock"}
	capNetAdmin    = capability{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN, "loading a sockops program, attaching it to a cgroup"}
	capSysResource = capability{"CAP_SYS_RESOURCE", unix.CAP_SYS_RESOURCE, "raising RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to"}
)

// checkCapabilities names the capabilities the process's effective set
// lacks, if any.
func checkCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("reading flowd's capabilities: %w", err)
	}
	effective := uint64(data[1].Effective)<<32 | uint64(data[0].Effective)
	var lim unix.Rlimit
	memlockUnlimited := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim) == nil && lim.Max == unix.RLIM_INFINITY
	return missingError(missingCapabilities(effective, chargesMemlock(kernelRelease()), memlockUnlimited))
}

// missingCapabilities returns the capabilities the effective set lacks.
// memlock says whether the kernel charges BPF maps to RLIMIT_MEMLOCK;
// memlockUnlimited, whether its hard limit already lets flowd raise it.
func missingCapabilities(effective uint64, memlock, memlockUnlimited bool) []capability {
	has := func(c capability) bool { return effective&(1<<c.bit) != 0 }
	sysAdmin := has(capability{bit: unix.CAP_SYS_ADMIN})
	var missing []capability
	for _, c := range []capability{capBPF, capPerfmon} {
		if !has(c) && !sysAdmin {
			missing = append(missing, c)
		}
	}
	if !has(capNetAdmin) {
		missing = append(missing, capNetAdmin)
	}
	if memlock && !memlockUnlimited && !has(capSysResource) {
		missing = append(missing, capSysResource)
	}
	return missing
}

// missingError says which capabilities are missing and what each is for;
// nil when none is.
func missingError(missing []capability) error {
	if len(missing) == 0 {
		return nil
	}
	lack := make([]string, len(missing))
	names := make([]string, len(missing))
	for i, c := range missing {
		lack[i] = c.name + " (" + c.why + ")"
		names[i] = c.name
	}
	it := "it"
	if len(missing) > 1 {
		it = "them"
	}
	return fmt.Errorf("flowd's effective capabilities lack %s: run flowd as root or grant %s (systemd: AmbientCapabilities=%s)",
		strings.Join(lack, ", "), it, strings.Join(names, " "))
}

// kernelRelease returns the running kernel's release, e.g. "6.1.0-18-amd64".
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// chargesMemlock reports whether a kernel of this release charges BPF maps
// to RLIMIT_MEMLOCK: those before 5.11, which charge the memory cgroup
// instead.
func chargesMemlock(release string) bool {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major < 5 || major == 5 && minor < 11
}

// processIDs reports whether the program can name the processes that
// connect flows: flowd runs in the initial PID namespace, whose numbers the
// program reads (task->tgid; in another they are not the ids flowd's /proc
// shows), and sockops programs may read the current task
// (bpf_get_current_task_btf). Where it cannot, the records name none.
func processIDs() bool {
	return inInitialPIDNamespace() && features.HaveProgramHelper(ebpf.SockOps, asm.FnGetCurrentTaskBtf) == nil
}

// procPIDInitIno is the inode number of the initial PID namespace
// (PROC_PID_INIT_INO, include/linux/proc_ns.h).
const procPIDInitIno = 0xEFFFFFFC

// inInitialPIDNamespace reports whether flowd runs in the initial PID
// namespace.
func inInitialPIDNamespace() bool {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return false
	}
	return st.Ino == procPIDInitIno
}
