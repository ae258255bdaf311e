// Package sink holds flowd's outputs: records as JSON Lines, and the file
// they are written to.
package sink

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/flowd/flowd/flow"
)

// Stdout is the output path that means standard output.
const Stdout = "-"

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("sink is closed")

// bufferSize is how many bytes of records JSONL gathers before it writes
// them. Writes of this size cost the kernel less per byte than smaller
// ones; it is about 170 records. It is also what JSONL holds while its
// writer fails.
const bufferSize = 1 << 20

// recordRoom is the room JSONL keeps free past bufferSize, so that
// encoding a record into the buffer does not grow it.
const recordRoom = 8 << 10

// RetryInterval is how long JSONL waits after a failed write before it
// writes again: a full disk is not retried on every record.
const RetryInterval = time.Second

// Faults hears what JSONL could not do. JSONL calls it with its lock
// held: it must not call back into the JSONL.
type Faults interface {
	// Mended: the file at path ended in a partial line of n bytes (a
	// write cut short by a crash), which was removed before appending.
	Mended(path string, n int)
	// Failed: writing failed with err, and lost records are gone for good
	// (0 when the lines not written wait to be retried).
	Failed(lost int, err error)
	// Resumed: a write succeeded after a failure.
	Resumed()
}

// JSONL writes records as JSON Lines: one AppendJSON object per line, or,
// with SetSamples(SamplesChanges), a partial line for a sample that can
// be one. It is buffered: records reach the writer when the buffer fills, on Flush and on
// Close. Its methods are safe for concurrent use, so several backends can
// share one JSONL.
//
// A failing writer (a full disk) does not fail Write or Flush: the
// backends go on. The lines not written stay buffered and are written
// again once RetryInterval has passed; while the buffer is full, further
// records are dropped. Faults hears of both.
type JSONL struct {
	mu     sync.Mutex
	w      io.Writer
	file   *File // w, when Open opened it: Reopen and Close act on it
	enc    Encoder
	buf    []byte // encoded lines not yet written; a partial line's rest first
	closed bool
	// samples is what sample lines hold; changes remembers flows for
	// SamplesChanges.
	samples Samples
	changes changes

	faults  Faults
	err     error     // the last write error, while writes fail
	retryAt time.Time // while writes fail: when to write again
	untold  int       // records dropped and not yet told to faults
	// omitEvents has bit 1<<e set for each event e not written (SetEvents).
	omitEvents uint64
}

var _ flow.Sink = (*JSONL)(nil)

// NewJSONL returns a JSONL that writes to w. Closing the JSONL does not
// close w. With members listed, the lines hold only those tcp_info members
// (Encoder.SetMembers); with none, every member a record has. Without
// SetFaults, the records a failing w loses go untold but for Close's
// error about those it could not write out.
func NewJSONL(w io.Writer, members ...flow.Field) *JSONL {
	j := &JSONL{w: w, buf: make([]byte, 0, bufferSize+recordRoom), faults: noFaults{}}
	j.enc.SetMembers(members...)
	return j
}

// Options say how Open opens the output and whom it tells of its faults.
type Options struct {
	FileOptions
	Members []flow.Field // the tcp_info members written; none is every member
	Faults  Faults       // nil: faults go untold (see NewJSONL)
}

// Open returns a JSONL that writes to path: standard output for Stdout,
// otherwise a File, which Reopen reopens and Close closes.
func Open(path string, o Options) (*JSONL, error) {
	if path == Stdout {
		j := NewJSONL(os.Stdout, o.Members...)
		j.SetFaults(o.Faults)
		return j, nil
	}
	f, err := OpenFile(path, o.FileOptions)
	if err != nil {
		return nil, fmt.Errorf("opening output: %w", err)
	}
	j := NewJSONL(f, o.Members...)
	j.file = f
	j.SetFaults(o.Faults)
	if n := f.Mended(); n > 0 {
		j.faults.Mended(path, n)
	}
	return j, nil
}

// SetFaults makes f hear of j's faults; nil stops that. Call it before the
// first Write.
func (j *JSONL) SetFaults(f Faults) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if f == nil {
		f = noFaults{}
	}
	j.faults = f
}

// noFaults is the Faults of a JSONL no one listens to.
type noFaults struct{}

func (noFaults) Mended(string, int) {}
func (noFaults) Failed(int, error)  {}
func (noFaults) Resumed()           {}

// SetSamples says what sample lines hold: SamplesFull (NewJSONL's), or
// SamplesChanges. Call it before the first Write.
func (j *JSONL) SetSamples(s Samples) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.samples = s
	j.changes.reset()
}

// SetEvents makes the JSONL write only the records of the listed events;
// with none listed it writes every record, as NewJSONL's does. Under
// SamplesChanges a line left out is not a flow's previous line: the next
// sample after a state record left out is complete, as its state changed.
// Call it before the first Write.
func (j *JSONL) SetEvents(events ...flow.Event) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.omitEvents = 0
	if len(events) > 0 {
		j.omitEvents = 1<<flow.EventOpen | 1<<flow.EventSample | 1<<flow.EventState | 1<<flow.EventClose
		for _, e := range events {
			j.omitEvents &^= 1 << (e % 64)
		}
	}
}

// Write appends r as one line, unless SetEvents left its event out. It
// does not keep r. Records are encoded straight into the buffer that is
// written out. It fails only after Close.
func (j *JSONL) Write(r *flow.Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return ErrClosed
	}
	if j.omitEvents&(1<<(r.Event%64)) != 0 { // not a record lost
		if r.Event == flow.EventClose && j.samples == SamplesChanges {
			j.changes.closed(r) // the flow is over, written or not
		}
		return nil
	}
	if len(j.buf) >= bufferSize {
		// Writes fail: unless a retry is due and succeeds, r is dropped,
		// before it is encoded, so that the flow's next line under
		// SamplesChanges is relative to a line that is kept.
		if j.due() {
			j.write()
		}
		if len(j.buf) >= bufferSize {
			j.untold++
			return nil
		}
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
	if len(j.buf) >= bufferSize && j.due() {
		j.write()
	}
	return nil
}

// Flush writes the buffered records to the underlying writer; while
// writes fail, only once RetryInterval has passed since the last failure.
// It fails never: Faults hears of failures.
func (j *JSONL) Flush() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	if j.due() {
		j.write()
	}
	j.tell()
	return nil
}

// due reports whether the buffer may be written: writes succeed, or the
// retry after a failure is due.
func (j *JSONL) due() bool { return j.err == nil || !time.Now().Before(j.retryAt) }

// write writes the buffer out now.
func (j *JSONL) write() {
	if len(j.buf) == 0 {
		return
	}
	n, err := j.w.Write(j.buf)
	if err == nil && n < len(j.buf) {
		err = io.ErrShortWrite
	}
	j.buf = j.buf[:copy(j.buf, j.buf[n:])]
	switch {
	case err != nil:
		j.err = fmt.Errorf("writing records: %w", err)
		j.retryAt = time.Now().Add(RetryInterval)
		j.faults.Failed(0, j.err)
	case j.err != nil:
		j.tell()
		j.err = nil
		j.faults.Resumed()
	}
}

// tell tells faults of the records dropped since it last did.
func (j *JSONL) tell() {
	if j.untold > 0 {
		j.faults.Failed(j.untold, j.err)
		j.untold = 0
	}
}

// drop drops the buffered lines, which could not be written, tells
// faults, and returns an error saying how many records that lost.
func (j *JSONL) drop() error {
	lost := bytes.Count(j.buf, []byte{'\n'}) // a partial line's rest ends one too
	j.buf = j.buf[:0]
	j.untold += lost
	j.tell()
	switch lost {
	case 0:
		return nil
	case 1:
		return fmt.Errorf("1 record not written: %w", j.err)
	}
	return fmt.Errorf("%d records not written: %w", lost, j.err)
}

// Reopen writes out the buffered records and reopens the file Open opened,
// for log rotation (File.Reopen). Then the flows' previous lines are
// forgotten, so that under SamplesChanges the new file starts each flow
// with a complete line. Records written meanwhile by other goroutines
// wait. It reports false when there is no file to reopen: the output is
// standard output or a writer given to NewJSONL, or it is closed.
//
// While writes fail, the lines that still cannot be written are dropped
// (and told to Faults) once the new file is open: they belong after the
// lines of the file renamed away, which flowd must let go of for its space
// to be freed, and the new file is written at once.
func (j *JSONL) Reopen() (bool, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.file == nil || j.closed {
		return false, nil
	}
	j.write()
	if err := j.file.Reopen(); err != nil {
		return true, err
	}
	if n := j.file.Mended(); n > 0 {
		j.faults.Mended(j.file.Path(), n)
	}
	_ = j.drop()
	j.retryAt = time.Time{}
	j.changes.reset()
	return true, nil
}

// Close flushes the buffered records and closes the file Open opened (not
// a writer given to NewJSONL); later Writes fail with ErrClosed. Records
// it cannot write out are lost, told to Faults and named in its error. It
// may be called more than once: only the first call does anything.
func (j *JSONL) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	j.write()
	err := j.drop()
	if j.file != nil {
		if cerr := j.file.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing output: %w", cerr))
		}
	}
	return err
}
