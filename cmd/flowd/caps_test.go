package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/internal/testutil"
)

// TestMissingCapabilityNamed runs `flowd run` with backends: [ebpf] as root
// with every capability the eBPF backend needs but one (and without
// CAP_SYS_ADMIN, which stands in for CAP_BPF and CAP_PERFMON): flowd exits
// 1 with one line that names the capability it lacks, not another one, and
// does not blame the kernel.
func TestMissingCapabilityNamed(t *testing.T) {
	testutil.RequireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("skipping: no setpriv (util-linux) on this machine")
	}
	cg := testutil.TempCgroup(t)
	cfg := writeConfig(t, fmt.Sprintf("backends: [ebpf]\ncgroup: %s\noutput:\n  path: %s/records.jsonl\n", cg, t.TempDir()))
	needed := []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"}
	for _, missing := range needed[:3] { // CAP_SYS_RESOURCE matters only before 5.11
		t.Run(missing, func(t *testing.T) {
			var keep []string
			for _, c := range needed {
				if c != missing {
					keep = append(keep, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, setpriv, "--bounding-set", "-all,"+strings.Join(keep, ","), "--", flowdBin, "run", "--config", cfg)
			cmd.Env = env()
			out, err := cmd.CombinedOutput()
			if code := cmd.ProcessState.ExitCode(); code != 1 {
				t.Fatalf("exit status %d (%v), want 1:\n%s", code, err, out)
			}
			last := lastLine(string(out))
			if !strings.HasPrefix(last, "flowd: ") || !strings.Contains(last, "lack "+missing+" (") {
				t.Errorf("the error does not say flowd lacks %s:\n%s", missing, last)
			}
			for _, c := range needed {
				if c != missing && strings.Contains(last, c) {
					t.Errorf("the error names %s, which flowd has:\n%s", c, last)
				}
			}
			if strings.Contains(last, "kernel does not support") {
				t.Errorf("a missing capability reads as a kernel limitation:\n%s", last)
			}
		})
	}
}
