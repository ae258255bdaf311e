package testutil

import (
	"net"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
)

// TCPInfoLen returns how many bytes of struct tcp_info getsockopt(TCP_INFO)
// fills on the running kernel. A kernel older than unix.TCPInfo fills a
// shorter struct (Linux 6.1: up to tcpi_snd_wnd); the members past its end
// read as 0 there, which is not the kernel's value: compare only members
// for which InTCPInfo is true.
func TCPInfoLen(tb testing.TB, c net.Conn) int {
	tb.Helper()
	var ti unix.TCPInfo
	n := uint32(unsafe.Sizeof(ti))
	var errno unix.Errno
	Control(tb, c, func(fd int) {
		_, _, errno = unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
			uintptr(unsafe.Pointer(&ti)), uintptr(unsafe.Pointer(&n)), 0)
	})
	if errno != 0 {
		tb.Fatalf("getsockopt TCP_INFO: %v", errno)
	}
	return int(n)
}

// InTCPInfo reports whether member f lies within the first n bytes of
// struct tcp_info. The bit-field members (snd_wscale, rcv_wscale,
// delivery_rate_app_limited, fastopen_client_fail) share bytes 6 and 7,
// which every kernel fills.
func InTCPInfo(f flow.Field, n int) bool {
	name := f.Name()
	sf, ok := reflect.TypeFor[unix.TCPInfo]().FieldByName(strings.ToUpper(name[:1]) + name[1:])
	if !ok {
		return n >= 8
	}
	return int(sf.Offset+sf.Type.Size()) <= n
}
