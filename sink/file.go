package sink

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// File is a records file as flowd writes it: appended to, kept out of the
// page cache behind its end (see writeBehind), and reopened at its path for
// log rotation. Its methods are not safe for concurrent use; JSONL
// serializes them.
type File struct {
	path   string
	f      *os.File
	behind writeBehind
}

// OpenFile opens path for append, creating it with mode 0644.
func OpenFile(path string) (*File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &File{path: path, f: f, behind: newWriteBehind(f)}, nil
}

// Reopen opens the path again and closes the file written so far: once the
// file has been renamed away, the writes go to a new file at the path. A
// write goes wholly to one file or the other. When the path cannot be
// opened, the current file stays.
func (o *File) Reopen() error {
	next, err := OpenFile(o.path)
	if err != nil {
		return fmt.Errorf("reopening output: %w", err)
	}
	prev := o.f
	*o = *next
	if err := prev.Close(); err != nil {
		return fmt.Errorf("closing the previous output: %w", err)
	}
	return nil
}

// Write writes b at the file's end, then does the write-behind work the
// write made due.
func (o *File) Write(b []byte) (int, error) {
	n, err := o.f.Write(b)
	if err != nil {
		return n, err
	}
	return n, o.behind.wrote(o.f)
}

// Close closes the file.
func (o *File) Close() error { return o.f.Close() }

// behindStep is the unit of writeBehind: records are written back and
// dropped from the page cache this many bytes at a time.
const behindStep = 4 << 20

// writeBehind keeps the output file out of the page cache. The kernel would
// keep every page flowd writes cached until memory runs short: at
// `ebpf.interval: 0s` that is tens of MB/s of pages that nobody rereads,
// which push out other programs' data, and every write lands in fresh
// pages, which on some machines costs far more than the bytes' copy (on
// the benchmark VM the daemon spent 2.4 µs per record at interval 0
// without write-behind, 1.0 µs with it, the same lines; BENCHMARKS.md).
// Instead, once the file's end is 8 MiB past the start of a step, that
// step's writeback is started (SYNC_FILE_RANGE_WRITE); once the next step's
// has been started too, it waits for the step's writeback to finish and
// drops its pages (POSIX_FADV_DONTNEED), whose memory the page cache then
// reuses for the next writes. So 8 to 16 MiB at the end of the file stay
// cached (tail -f reads from memory), and writeback goes in 4 MiB pieces
// rather than when the kernel's dirty limits are reached. Only regular
// files get it; a file system that refuses the calls turns it off.
type writeBehind struct {
	on      bool
	started int64 // writeback was started for the file's bytes before this offset
	dropped int64 // the bytes before this offset were dropped from the page cache
}

func newWriteBehind(f *os.File) writeBehind {
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return writeBehind{}
	}
	start := st.Size() &^ (behindStep - 1)
	return writeBehind{on: true, started: start, dropped: start}
}

// wrote does the work the write just made due. An I/O error from the
// writeback is returned, as the write's own error: the records before it
// may not be on disk.
func (w *writeBehind) wrote(f *os.File) error {
	if !w.on {
		return nil
	}
	end, err := f.Seek(0, io.SeekCurrent) // O_APPEND: the end of this write
	if err != nil {
		w.on = false
		return nil
	}
	if end < w.started {
		// Truncated (copytruncate rotation): start again from here.
		w.started = end &^ (behindStep - 1)
		w.dropped = w.started
	}
	fd := int(f.Fd())
	for end-w.started >= 2*behindStep {
		if err := unix.SyncFileRange(fd, w.started, behindStep, unix.SYNC_FILE_RANGE_WRITE); err != nil {
			return w.fail(err)
		}
		w.started += behindStep
	}
	for w.started-w.dropped >= 2*behindStep {
		const wait = unix.SYNC_FILE_RANGE_WAIT_BEFORE | unix.SYNC_FILE_RANGE_WRITE | unix.SYNC_FILE_RANGE_WAIT_AFTER
		if err := unix.SyncFileRange(fd, w.dropped, behindStep, wait); err != nil {
			return w.fail(err)
		}
		if err := unix.Fadvise(fd, w.dropped, behindStep, unix.FADV_DONTNEED); err != nil {
			return w.fail(err)
		}
		w.dropped += behindStep
	}
	return nil
}

// fail turns write-behind off for a file system that does not support it
// and reports a real I/O error.
func (w *writeBehind) fail(err error) error {
	w.on = false
	if errors.Is(err, unix.EIO) || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		return fmt.Errorf("writing back output: %w", err)
	}
	return nil
}
