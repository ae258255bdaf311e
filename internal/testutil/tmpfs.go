package testutil

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// SmallFS mounts a tmpfs of size bytes on a new directory, for tests of a
// full disk, and unmounts it when the test ends. It needs root.
func SmallFS(tb testing.TB, size int) string {
	tb.Helper()
	RequireRoot(tb)
	dir := filepath.Join(tb.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, fmt.Sprintf("size=%d", size)); err != nil {
		tb.Fatalf("mounting a tmpfs of %d bytes: %v", size, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// FillFS writes a file into dir until its file system is full and returns
// the file's path: removing the file frees the space again.
func FillFS(tb testing.TB, dir string) string {
	tb.Helper()
	f, err := os.CreateTemp(dir, "ballast-")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{'x'}, 4096)
	for {
		if _, err := f.Write(chunk); errors.Is(err, unix.ENOSPC) {
			return f.Name()
		} else if err != nil {
			tb.Fatal(err)
		}
	}
}
