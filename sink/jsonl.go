// Package sink holds flowd's outputs: records as JSON Lines.
package sink

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/flowd/flowd/backends"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("sink is closed")

// bufferSize is the size of the JSONL write buffer.
const bufferSize = 64 << 10

// JSONL writes records as JSON Lines: one AppendJSON object per line. It is
// buffered: records reach the writer when the buffer fills, on Flush and on
// Close. Its methods are safe for concurrent use, so several backends can
// share one JSONL.
type JSONL struct {
	mu     sync.Mutex
	w      *bufio.Writer
	buf    []byte // encoding buffer, reused
	closed bool
}

var _ backends.Sink = (*JSONL)(nil)

// NewJSONL returns a JSONL that writes to w. Closing the JSONL does not
// close w.
func NewJSONL(w io.Writer) *JSONL {
	return &JSONL{w: bufio.NewWriterSize(w, bufferSize), buf: make([]byte, 0, 2048)}
}

// Write appends r as one line. It does not keep r.
func (j *JSONL) Write(r *backends.Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return ErrClosed
	}
	j.buf = append(AppendJSON(j.buf[:0], r), '\n')
	if _, err := j.w.Write(j.buf); err != nil {
		return fmt.Errorf("writing record: %w", err)
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

func (j *JSONL) flush() error {
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("flushing records: %w", err)
	}
	return nil
}

// Close flushes the buffered records; later Writes fail with ErrClosed.
// It may be called more than once: only the first call flushes.
func (j *JSONL) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true
	return j.flush()
}
