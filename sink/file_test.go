package sink

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestFileWriteBehind writes 20 MiB to a File: the file holds
// every byte, and what lies more than two steps behind its end has left the
// page cache (mincore), while the last step is still cached.
func TestFileWriteBehind(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type == unix.TMPFS_MAGIC {
		t.Skipf("%s is on tmpfs, whose pages cannot be dropped: set TMPDIR to a disk file system", dir)
	}
	path := filepath.Join(dir, "out.jsonl")
	o, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !o.behind.on {
		t.Fatal("write-behind is off for a regular file")
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	const chunks = 20
	for i := range chunks {
		chunk[0] = byte('A' + i)
		if _, err := o.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if o.behind.started != 16<<20 || o.behind.dropped != 12<<20 {
		t.Errorf("writeback started up to %d, pages dropped up to %d; want %d and %d",
			o.behind.started, o.behind.dropped, 16<<20, 12<<20)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := int64(chunks) << 20
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	resident := make([]byte, size/int64(os.Getpagesize()))
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)),
		uintptr(unsafe.Pointer(&resident[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	pages := func(from, to int64) (n int) {
		for _, r := range resident[from/int64(os.Getpagesize()) : to/int64(os.Getpagesize())] {
			n += int(r & 1)
		}
		return n
	}
	if n := pages(0, 12<<20); n > 0 {
		t.Errorf("%d pages of the first 12 MiB are still cached, want none", n)
	}
	if n, all := pages(16<<20, size), (size-16<<20)/int64(os.Getpagesize()); n != int(all) {
		t.Errorf("%d of the last %d pages cached, want all", n, all)
	}
	// Every byte arrived (read after the mincore check: reading caches).
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range chunks {
		chunk[0] = byte('A' + i)
		if !bytes.Equal(b[i<<20:(i+1)<<20], chunk) {
			t.Fatalf("MiB %d of the file differs from what was written", i)
		}
	}
}

// TestFileTruncated: after the file is truncated under flowd
// (logrotate's copytruncate), write-behind starts again from the new end
// and the records keep arriving.
func TestFileTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	o, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	for range 10 {
		if _, err := o.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if o.behind.started != 4<<20 {
		t.Fatalf("writeback started up to %d, want %d", o.behind.started, 4<<20)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	if o.behind.started != 0 || o.behind.dropped != 0 {
		t.Errorf("after truncation: started %d, dropped %d; want 0 and 0", o.behind.started, o.behind.dropped)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "after\n" {
		t.Errorf("file after truncation holds %q (%v), want the last write", b, err)
	}
}

func TestFileNotRegular(t *testing.T) {
	o, err := OpenFile(os.DevNull, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if o.behind.on {
		t.Error("write-behind is on for /dev/null")
	}
	if n, err := o.Write(make([]byte, 9<<20)); n != 9<<20 || err != nil {
		t.Errorf("Write = %d, %v", n, err)
	}
}
