// Package kernels runs flowd's privileged tests on other kernels than the
// host's: it fetches a distribution kernel, packs the project's own test
// binaries into an initramfs whose /init (kernels/init) runs them, boots it
// under qemu and reads the results back from the serial console.
//
// The host side is kernels/run (`make test-kernels`); this package holds
// what both sides share (the plan the guest follows and the markers it
// prints) and what the host needs to build, boot and judge a guest.
package kernels

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PlanPath is where the runner puts the Plan in the initramfs.
const PlanPath = "flowd/plan.json"

// Plan is what the guest's /init does after it has set the machine up.
type Plan struct {
	// Modules are loaded in this order before any step runs (paths in
	// the initramfs). Features flowd needs are built in; the modules are
	// for what a distribution builds as one (inet_diag for netlink).
	Modules []string `json:"modules,omitempty"`
	// Steps run one after another; each is a test binary.
	Steps []Step `json:"steps"`
}

// Step is one program the guest runs, with its output on the console.
type Step struct {
	Name string   `json:"name"` // short, no spaces: "ebpf", "netlink"
	Path string   `json:"path"` // in the initramfs
	Args []string `json:"args,omitempty"`
}

// The guest frames its output with marker lines. They are found anywhere
// in a console line, since kernel messages may share it.
const (
	markerPrefix = "@@flowd-guest "
	markerBoot   = markerPrefix + "boot"
	markerModule = markerPrefix + "module"
	markerBegin  = markerPrefix + "begin"
	markerEnd    = markerPrefix + "end"
	markerDone   = markerPrefix + "done"
	markerError  = markerPrefix + "error"
)

// BootLine announces the guest's kernel release.
func BootLine(release string) string { return markerBoot + " kernel=" + release }

// ModuleLine reports a module load (err nil: loaded).
func ModuleLine(path string, err error) string {
	if err != nil {
		return fmt.Sprintf("%s %s failed: %v", markerModule, path, err)
	}
	return fmt.Sprintf("%s %s loaded", markerModule, path)
}

// BeginLine opens the output of one step.
func BeginLine(step string) string { return markerBegin + " " + step }

// EndLine closes the output of one step with its exit code (-1: it could
// not be run or was killed by a signal) and how long it took.
func EndLine(step string, exit int, d time.Duration) string {
	return fmt.Sprintf("%s %s exit=%d duration=%s", markerEnd, step, exit, d.Round(time.Millisecond))
}

// DoneLine ends the guest's run; the guest powers off after it.
func DoneLine() string { return markerDone }

// ErrorLine reports a failure of the guest's own setup.
func ErrorLine(what string, err error) string {
	return fmt.Sprintf("%s %s: %v", markerError, what, err)
}

// parseEnd reads the fields of an EndLine (from its step name on).
func parseEnd(rest string) (step string, exit int, d time.Duration, err error) {
	f := strings.Fields(rest)
	if len(f) != 3 {
		return "", 0, 0, fmt.Errorf("malformed end marker %q", rest)
	}
	e, ok1 := strings.CutPrefix(f[1], "exit=")
	ds, ok2 := strings.CutPrefix(f[2], "duration=")
	if !ok1 || !ok2 {
		return "", 0, 0, fmt.Errorf("malformed end marker %q", rest)
	}
	if exit, err = strconv.Atoi(e); err != nil {
		return "", 0, 0, fmt.Errorf("malformed exit code in %q: %w", rest, err)
	}
	if d, err = time.ParseDuration(ds); err != nil {
		return "", 0, 0, fmt.Errorf("malformed duration in %q: %w", rest, err)
	}
	return f[0], exit, d, nil
}
