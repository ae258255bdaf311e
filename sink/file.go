package sink

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// defaultMode is the permissions of an output file OpenFile creates when
// FileOptions sets none: the records name every flow of the host, in every
// network namespace, so only the owner reads them.
const defaultMode os.FileMode = 0o600

// ErrSymlink is returned by OpenFile for a path whose last component is a
// symbolic link, unless FileOptions.FollowSymlinks: a link planted by
// another user in a directory it can write would redirect root's records
// to a file of that user's choosing.
var ErrSymlink = errors.New("is a symbolic link")

// maxPartialLine bounds the partial last line OpenFile removes: a line of
// flowd's is a few KiB at most, so a longer run of bytes without a newline
// at the end of a file is not the remains of a cut-short write of flowd's,
// and OpenFile refuses to append to the file rather than cut it.
const maxPartialLine = 64 << 10

// FileOptions say how OpenFile opens the file.
type FileOptions struct {
	Mode           os.FileMode // permissions of a file OpenFile creates, less the umask; 0 is defaultMode
	FollowSymlinks bool        // open the target of a symbolic link at the path rather than refuse it
}

// File is a records file as flowd writes it: appended to, whole lines
// only, kept out of the page cache behind its end (see writeBehind), and
// reopened at its path for log rotation. Its methods are not safe for
// concurrent use; JSONL serializes them.
type File struct {
	path    string
	opts    FileOptions
	f       *os.File
	regular bool
	mended  int // bytes of a partial last line removed at open
	behind  writeBehind
}

// OpenFile opens path for append, creating it with o.Mode. When a regular
// file does not end with a newline (a write of flowd's was cut short by a
// crash or a full disk), the partial last line is removed first: appending
// to it would make one invalid line of two records. Mended says how many
// bytes that removed.
func OpenFile(path string, o FileOptions) (*File, error) {
	mode := o.Mode
	if mode == 0 {
		mode = defaultMode
	}
	// A regular file is opened for reading too, to find a partial last
	// line; a pipe is not, or flowd would be a reader of its own output.
	flags := os.O_WRONLY | os.O_APPEND | os.O_CREATE
	st, err := os.Stat(path)
	readable := err == nil && st.Mode().IsRegular()
	if readable {
		flags = os.O_RDWR | os.O_APPEND | os.O_CREATE
	}
	if !o.FollowSymlinks {
		flags |= unix.O_NOFOLLOW
	}
	f, err := os.OpenFile(path, flags, mode)
	if errors.Is(err, unix.ELOOP) && !o.FollowSymlinks {
		if st, lerr := os.Lstat(path); lerr == nil && st.Mode()&os.ModeSymlink != 0 {
			return nil, fmt.Errorf("%s %w", path, ErrSymlink)
		}
	}
	if err != nil {
		return nil, err
	}
	if st, err = f.Stat(); err != nil {
		f.Close()
		return nil, err
	}
	o.Mode = mode
	file := &File{path: path, opts: o, f: f, regular: st.Mode().IsRegular()}
	if file.regular && readable {
		if file.mended, err = mend(f, st.Size()); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	file.behind = newWriteBehind(f)
	return file, nil
}

// mend removes the partial last line of the file of this size, if it ends
// in one, and returns how many bytes that removed.
func mend(f *os.File, size int64) (int, error) {
	if size == 0 {
		return 0, nil
	}
	tail := make([]byte, min(size, maxPartialLine))
	if _, err := f.ReadAt(tail, size-int64(len(tail))); err != nil {
		return 0, fmt.Errorf("reading the last line: %w", err)
	}
	if tail[len(tail)-1] == '\n' {
		return 0, nil
	}
	i := bytes.LastIndexByte(tail, '\n')
	if i < 0 && size > maxPartialLine {
		return 0, fmt.Errorf("ends in more than %d bytes without a newline: not flowd's JSON Lines, not appending to it", maxPartialLine)
	}
	partial := len(tail) - (i + 1)
	if err := f.Truncate(size - int64(partial)); err != nil {
		return 0, fmt.Errorf("removing its partial last line: %w", err)
	}
	return partial, nil
}

// Mended returns how many bytes of a partial last line OpenFile removed
// (0 when the file ended with a newline).
func (o *File) Mended() int { return o.mended }

// Path returns the path the file was opened at.
func (o *File) Path() string { return o.path }

// Reopen opens the path again and closes the file written so far: once the
// file has been renamed away, the writes go to a new file at the path. A
// write goes wholly to one file or the other. When the path cannot be
// opened, the current file stays.
func (o *File) Reopen() error {
	next, err := OpenFile(o.path, o.opts)
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

// Write writes b, which holds whole lines, at the file's end, then does
// the write-behind work the write made due. When the write is cut short
// (a full disk), the partial line it wrote is removed from the file again
// and n counts the whole lines written, so that the file never holds a
// partial line and a retry of b[n:] starts on a line boundary. (Where the
// partial line cannot be removed, n counts it, and the caller's retry
// completes it.)
func (o *File) Write(b []byte) (int, error) {
	n, err := o.f.Write(b)
	if err != nil {
		return o.cut(b, n), err
	}
	return n, o.behind.wrote(o.f)
}

// cut removes the partial line at the end of the file that a write of b
// cut short after n bytes left, and returns how many bytes of b remain
// written.
func (o *File) cut(b []byte, n int) int {
	whole := bytes.LastIndexByte(b[:n], '\n') + 1
	if whole == n || !o.regular {
		return n
	}
	end, err := o.f.Seek(0, io.SeekCurrent) // O_APPEND: the end of the write
	if err != nil {
		return n
	}
	if err := o.f.Truncate(end - int64(n-whole)); err != nil {
		return n
	}
	return whole
}

// Close closes the file.
func (o *File) Close() error { return o.f.Close() }

// behindStep is the unit of writeBehind: records are written back and
// dropped from the page cache this many bytes at a time.
const behindStep = 4 << 20

// writeBehind keeps the output file out of the page cache. The kernel would
// keep every page flowd writes cached until memory runs short: pages that
// nobody rereads push out other programs' data, and every write lands in
// fresh pages, which costs more than the bytes' copy (docs/performance.md,
// "Output").
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
