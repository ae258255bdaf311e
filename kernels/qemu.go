package kernels

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"syscall"
	"time"
)

// InitramfsFile is one file of an initramfs: Source on the host, or Data.
type InitramfsFile struct {
	Name   string // in the initramfs, e.g. "flowd/bin/ebpf.test"
	Source string
	Data   []byte
	Mode   os.FileMode
}

// WriteInitramfs writes a gzip'd newc initramfs holding the base a Go
// /init needs (/dev/console and the mount points), the plan and files.
func WriteInitramfs(w io.Writer, plan *Plan, files []InitramfsFile) error {
	planJSON, err := json.MarshalIndent(plan, "", "  ")
	if err != nil {
		return err
	}
	// The kernel decompresses it under emulation: favour speed over size.
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	cw := NewCPIOWriter(zw)
	for _, d := range []string{"dev", "proc", "sys", "tmp", "root", "run"} {
		if err := cw.Dir(d, 0o755); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init's standard streams before
	// init can mount devtmpfs.
	if err := cw.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := cw.File(PlanPath, 0o644, planJSON); err != nil {
		return err
	}
	for _, f := range files {
		if err := addFile(cw, f); err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func addFile(cw *CPIOWriter, f InitramfsFile) error {
	if f.Source == "" {
		return cw.File(f.Name, f.Mode, f.Data)
	}
	src, err := os.Open(f.Source)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	mode := f.Mode
	if mode == 0 {
		mode = st.Mode().Perm()
	}
	if err := cw.FileFrom(f.Name, mode, st.Size(), src); err != nil {
		return fmt.Errorf("adding %s as %s: %w", f.Source, path.Clean(f.Name), err)
	}
	return nil
}

// VM is one qemu run of a kernel and an initramfs, console on the serial port.
type VM struct {
	Kernel, Initrd string
	Append         string // kernel command line after the console settings
	MemoryMB, CPUs int
	KVM            bool // use KVM; otherwise qemu emulates the CPU (TCG)
}

// Args returns qemu's command line.
func (vm *VM) Args() []string {
	accel := "tcg"
	if vm.KVM {
		accel = "kvm"
	}
	args := []string{
		"-accel", accel,
		"-m", fmt.Sprint(vm.MemoryMB), "-smp", fmt.Sprint(vm.CPUs),
		"-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "stdio", "-monitor", "none",
		"-kernel", vm.Kernel, "-initrd", vm.Initrd,
		"-append", "console=ttyS0 panic=-1 " + vm.Append,
	}
	if vm.KVM {
		args = append(args, "-cpu", "host")
	}
	return args
}

// ErrTimeout is returned by Run when the guest did not power off in time.
var ErrTimeout = errors.New("the guest did not power off in time")

// Run boots the VM with the serial console written to console, until the
// guest powers off (qemu then exits 0 whatever the guest did: read the
// console) or ctx ends, when qemu is killed and Run returns ErrTimeout.
func (vm *VM) Run(ctx context.Context, console io.Writer) error {
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", vm.Args()...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = console, console
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		return ErrTimeout
	}
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}
