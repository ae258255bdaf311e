package daemon

import (
	"fmt"
	"sync"

	"github.com/flowd/flowd/sink"
)

// outputFile is the records' output when it is a file (output.path). Its
// file can be reopened, for log rotation: once the file has been renamed
// away, reopen creates a new one at the path, and the writes go there from
// then on. A write goes wholly to one file or the other, so no record is
// lost or split.
type outputFile struct {
	path string
	mu   sync.Mutex // serializes writes, the swap and Close
	f    *sink.File
}

func openOutputFile(path string) (*outputFile, error) {
	f, err := sink.OpenFile(path)
	if err != nil {
		return nil, fmt.Errorf("opening output: %w", err)
	}
	return &outputFile{path: path, f: f}, nil
}

func (o *outputFile) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.f.Write(b)
}

// reopen opens the path again and closes the file written so far. When the
// path cannot be opened, the current file stays.
func (o *outputFile) reopen() error {
	f, err := sink.OpenFile(o.path)
	if err != nil {
		return fmt.Errorf("reopening output: %w", err)
	}
	o.mu.Lock()
	old := o.f
	o.f = f
	o.mu.Unlock()
	if err := old.Close(); err != nil {
		return fmt.Errorf("closing the previous output: %w", err)
	}
	return nil
}

func (o *outputFile) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.f.Close(); err != nil {
		return fmt.Errorf("closing output: %w", err)
	}
	return nil
}
