// Package sink holds flowd's outputs: records as JSON Lines, and the file
// they are written to.
package sink

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/flowd/flowd/flow"
)

// Stdout is the output path that means standard output.
const Stdout = "-"

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("sink is closed")

// bufferSize is how many bytes of records JSONL gathers before it writes
// them. Writes of this size cost the kernel less per byte than smaller
// ones; it is about 170 records.
const bufferSize = 1 << 20

// recordRoom is the room JSONL keeps free past bufferSize, so that
// encoding a record into the buffer does not grow it.
const recordRoom = 8 << 10

// JSONL writes records as JSON Lines: one AppendJSON object per line, or,
// with SetSamples(SamplesChanges), a partial line for a sample that can
// be one. It is buffered: records reach the writer when the buffer fills, on Flush and on
// Close. Its methods are safe for concurrent use, so several backends can
// share one JSONL.
type JSONL struct {
	mu     sync.Mutex
	w      io.Writer
	file   *File // w, when Open opened it: Reopen and Close act on it
	enc    Encoder
	buf    []byte // encoded records not yet written
	err    error  // the first write error, returned from then on
	closed bool
	// samples is what sample lines hold; changes remembers flows for
	// SamplesChanges.
	samples Samples
	changes changes
}

var _ flow.Sink = (*JSONL)(nil)

// NewJSONL returns a JSONL that writes to w. Closing the JSONL does not
// close w. With members listed, the lines hold only those tcp_info members
// (Encoder.SetMembers); with none, every member a record has.
func NewJSONL(w io.Writer, members ...flow.Field) *JSONL {
	j := &JSONL{w: w, buf: make([]byte, 0, bufferSize+recordRoom)}
	j.enc.SetMembers(members...)
	return j
}

// Open returns a JSONL that writes to path: standard output for Stdout,
// otherwise a File, which Reopen reopens and Close closes.
func Open(path string, members ...flow.Field) (*JSONL, error) {
	if path == Stdout {
		return NewJSONL(os.Stdout, members...), nil
	}
	f, err := OpenFile(path)
	if err != nil {
		return nil, fmt.Errorf("opening output: %w", err)
	}
	j := NewJSONL(f, members...)
	j.file = f
	return j, nil
}

// SetSamples says what sample lines hold: SamplesFull (NewJSONL's), or
// SamplesChanges. Call it before the first Write.
func (j *JSONL) SetSamples(s Samples) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.samples = s
	j.changes.reset()
}

// Write appends r as one line. It does not keep r. Records are encoded
// straight into the buffer that is written out.
func (j *JSONL) Write(r *flow.Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return ErrClosed
	}
	if j.err != nil {
		return j.err
	}
	if j.samples == SamplesChanges {
		if omit, partial := j.changes.unchanged(r); partial {
			omit = omit.Or(j.enc.omit)
			j.buf = j.enc.appendPartial(j.buf, r, &omit)
		} else {
			j.buf = j.enc.AppendJSON(j.buf, r)
		}
	} else {
		j.buf = j.enc.AppendJSON(j.buf, r)
	}
	j.buf = append(j.buf, '\n')
	if len(j.buf) >= bufferSize {
		return j.flush()
	}
	return nil
}

// Flush writes the buffered records to the underlying writer.
func (j *JSONL) Flush() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	return j.flush()
}

// flush writes the buffer out. After a failed write the rest stays
// buffered and every later call fails with the same error, as with a
// bufio.Writer.
func (j *JSONL) flush() error {
	if j.err != nil {
		return j.err
	}
	if len(j.buf) == 0 {
		return nil
	}
	n, err := j.w.Write(j.buf)
	if err == nil && n < len(j.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		j.buf = j.buf[:copy(j.buf, j.buf[n:])]
		j.err = fmt.Errorf("writing records: %w", err)
		return j.err
	}
	j.buf = j.buf[:0]
	return nil
}

// Reopen writes out the buffered records and reopens the file Open opened,
// for log rotation (File.Reopen). Then the flows' previous lines are
// forgotten, so that under SamplesChanges the new file starts each flow
// with a complete line. Records written meanwhile by other goroutines
// wait. It reports false when there is no file to reopen: the output is
// standard output or a writer given to NewJSONL, or it is closed.
func (j *JSONL) Reopen() (bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.file == nil || j.closed {
		return false, nil
	}
	if err := j.flush(); err != nil {
		return true, err
	}
	if err := j.file.Reopen(); err != nil {
		return true, err
	}
	j.changes.reset()
	return true, nil
}

// Close flushes the buffered records and closes the file Open opened (not
// a writer given to NewJSONL); later Writes fail with ErrClosed. It may be
// called more than once: only the first call does anything.
func (j *JSONL) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	err := j.flush()
	if j.file != nil {
		if cerr := j.file.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing output: %w", cerr))
		}
	}
	return err
}
