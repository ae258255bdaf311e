// Command init is PID 1 of a kernel-matrix guest (see package kernels). It
// mounts what flowd and its tests need, brings the loopback up, loads the
// plan's modules, runs each step of the plan with its output on the
// console between marker lines, and powers the machine off.
//
// It is built static (CGO_ENABLED=0) and put at /init of the initramfs.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/kernels"
)

func main() {
	fmt.Println(kernels.BootLine(release()))
	if err := setup(); err != nil {
		fmt.Println(kernels.ErrorLine("setting up the guest", err))
		powerOff()
	}
	plan, err := readPlan("/" + kernels.PlanPath)
	if err != nil {
		fmt.Println(kernels.ErrorLine("reading the plan", err))
		powerOff()
	}
	for _, m := range plan.Modules {
		fmt.Println(kernels.ModuleLine(m, loadModule(m)))
	}
	for _, s := range plan.Steps {
		run(s)
	}
	fmt.Println(kernels.DoneLine())
	powerOff()
}

func release() string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(uts.Release[:])
}

// setup mounts the pseudo file systems, a tmpfs on /tmp and brings lo up.
func setup() error {
	for _, m := range []struct {
		fstype, target string
		flags          uintptr
	}{
		{"proc", "/proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"devtmpfs", "/dev", unix.MS_NOSUID},
		{"cgroup2", "/sys/fs/cgroup", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"bpf", "/sys/fs/bpf", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"tmpfs", "/tmp", unix.MS_NOSUID | unix.MS_NODEV},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, ""); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return linkUp("lo")
}

// linkUp sets IFF_UP on an interface (what `ip link set lo up` does).
func linkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for ioctl: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("reading flags of %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing %s up: %w", name, err)
	}
	return nil
}

func readPlan(path string) (*kernels.Plan, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var p kernels.Plan
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	return &p, nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// run runs one step with the console as its output, in /tmp.
func run(s kernels.Step) {
	fmt.Println(kernels.BeginLine(s.Name))
	start := time.Now()
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Dir = "/tmp"
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	cmd.Env = []string{"PATH=/flowd/bin", "HOME=/tmp", "TMPDIR=/tmp", "GOTRACEBACK=all"}
	exit := 0
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			exit = ee.ExitCode() // -1 when killed by a signal
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				fmt.Printf("%s: killed by %s\n", filepath.Base(s.Path), ws.Signal())
			}
		} else {
			fmt.Println(kernels.ErrorLine("running "+s.Path, err))
			exit = -1
		}
	}
	fmt.Println(kernels.EndLine(s.Name, exit, time.Since(start)))
}

// powerOff syncs and powers the machine off. If that fails, PID 1 exits:
// the kernel panics, and with panic=-1 and qemu's -no-reboot qemu exits.
func powerOff() {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		fmt.Println(kernels.ErrorLine("powering off", err))
	}
	os.Exit(1)
}
