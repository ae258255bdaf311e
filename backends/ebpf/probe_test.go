package ebpf

import (
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMissingCapabilities: each capability the backend needs is named when
// the effective set lacks it, and only then; CAP_SYS_ADMIN stands in for
// CAP_BPF and CAP_PERFMON; CAP_SYS_RESOURCE matters only where BPF maps are
// charged to a memlock limit flowd cannot raise without it.
func TestMissingCapabilities(t *testing.T) {
	set := func(caps ...int) (s uint64) {
		for _, c := range caps {
			s |= 1 << c
		}
		return s
	}
	all := set(unix.CAP_BPF, unix.CAP_PERFMON, unix.CAP_NET_ADMIN, unix.CAP_SYS_RESOURCE)
	without := func(c int) uint64 { return all &^ set(c) }
	for _, tt := range []struct {
		name             string
		effective        uint64
		memlock, limitOK bool
		want             []string
	}{
		{name: "all", effective: all},
		{name: "root", effective: ^uint64(0) >> 23}, // every capability up to CAP_CHECKPOINT_RESTORE (40)
		{name: "no CAP_BPF", effective: without(unix.CAP_BPF), want: []string{"CAP_BPF"}},
		{name: "no CAP_PERFMON", effective: without(unix.CAP_PERFMON), want: []string{"CAP_PERFMON"}},
		{name: "no CAP_NET_ADMIN", effective: without(unix.CAP_NET_ADMIN), want: []string{"CAP_NET_ADMIN"}},
		{name: "CAP_SYS_ADMIN for CAP_BPF and CAP_PERFMON", effective: set(unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN)},
		{name: "none", effective: 0, want: []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}},
		{name: "no CAP_SYS_RESOURCE, memcg accounting", effective: without(unix.CAP_SYS_RESOURCE)},
		{name: "no CAP_SYS_RESOURCE, memlock", effective: without(unix.CAP_SYS_RESOURCE), memlock: true, want: []string{"CAP_SYS_RESOURCE"}},
		{name: "no CAP_SYS_RESOURCE, memlock unlimited", effective: without(unix.CAP_SYS_RESOURCE), memlock: true, limitOK: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, c := range missingCapabilities(tt.effective, tt.memlock, tt.limitOK) {
				got = append(got, c.name)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("missing %v, want %v", got, tt.want)
			}
			err := missingError(missingCapabilities(tt.effective, tt.memlock, tt.limitOK))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("error %v with nothing missing", err)
				}
				return
			}
			msg := err.Error()
			for _, name := range []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"} {
				if named := strings.Contains(msg, name); named != slices.Contains(tt.want, name) {
					t.Errorf("%s named: %v, in %q", name, named, msg)
				}
			}
			if strings.Contains(msg, "kernel does not support") {
				t.Errorf("a missing capability reads as a kernel limitation: %q", msg)
			}
		})
	}
}

func TestChargesMemlock(t *testing.T) {
	for release, want := range map[string]bool{
		"4.19.0-27-amd64": true,
		"5.10.0-32-amd64": true,
		"5.11.0":          false,
		"6.1.0-18-amd64":  false,
		"6.18.0":          false,
		"":                false,
	} {
		if got := chargesMemlock(release); got != want {
			t.Errorf("chargesMemlock(%q) = %v, want %v", release, got, want)
		}
	}
}
