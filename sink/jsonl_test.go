package sink

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
)

func TestJSONLConcurrent(t *testing.T) {
	var out bytes.Buffer
	j := NewJSONL(&out)
	const writers, each = 4, 2000
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			r := sample()
			r.Backend = []string{"ebpf", "netlink"}[w%2]
			for i := range each {
				r.Cookie = uint64(w*each + i)
				if err := j.Write(r); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	seen := make(map[uint64]bool)
	s := bufio.NewScanner(&out)
	for s.Scan() {
		var r flow.Record
		if err := ParseJSON(s.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", s.Text(), err)
		}
		if seen[r.Cookie] {
			t.Errorf("cookie %d written twice", r.Cookie)
		}
		seen[r.Cookie] = true
	}
	if len(seen) != writers*each {
		t.Errorf("%d records read back, want %d", len(seen), writers*each)
	}
}

func TestJSONLFlushAndClose(t *testing.T) {
	var out bytes.Buffer
	j := NewJSONL(&out)
	if err := j.Write(sample()); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 0 {
		t.Errorf("a record reached the writer before Flush: buffering is off")
	}
	if err := j.Flush(); err != nil {
		t.Fatal(err)
	}
	want := string(AppendJSON(nil, sample())) + "\n"
	if out.String() != want {
		t.Errorf("after Flush: %q, want %q", out.String(), want)
	}
	if err := j.Write(sample()); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if out.String() != want+want {
		t.Errorf("Close did not flush")
	}
	if err := j.Write(sample()); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if err := j.Flush(); err != nil {
		t.Errorf("Flush after Close = %v", err)
	}
}

func TestJSONLMembers(t *testing.T) {
	var out bytes.Buffer
	j := NewJSONL(&out, flow.FieldSndCwnd, flow.FieldRTT)
	if err := j.Write(sample()); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	var r flow.Record
	if err := ParseJSON(bytes.TrimSuffix(out.Bytes(), []byte("\n")), &r); err != nil {
		t.Fatal(err)
	}
	want := sample()
	for f := range flow.NumFields {
		v, ok := r.Info.Get(f)
		switch {
		case f == flow.FieldSndCwnd || f == flow.FieldRTT:
			if w, _ := want.Info.Get(f); !ok || v != w {
				t.Errorf("%s = %d, %v; want %d", f, v, ok, w)
			}
		case ok:
			t.Errorf("%s written, not listed", f)
		}
	}
}

// TestJSONLEvents: SetEvents leaves the other events' records out; with
// partial samples, a flow whose open, state or close record is left out
// still reads back as it was written.
func TestJSONLEvents(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	series := func(cookie uint64) []*flow.Record {
		var rs []*flow.Record
		for i, ev := range []flow.Event{flow.EventOpen, flow.EventSample, flow.EventSample, flow.EventState,
			flow.EventSample, flow.EventSample, flow.EventClose} {
			r := sample()
			r.Time, r.Event, r.Cookie, r.OldState = t0.Add(time.Duration(i)*time.Millisecond), ev, cookie, 0
			if i >= 3 { // from the state record on
				r.State = flow.StateCloseWait
			}
			if ev == flow.EventState {
				r.OldState = flow.StateEstablished
			}
			r.Info.Set(flow.FieldBytesAcked, uint64(i))
			rs = append(rs, r)
		}
		return rs
	}
	// A sample of the same cookie after the close record, with the header
	// of the flow's last line: complete only if the close record made the
	// output forget the flow, written or not.
	recs := series(7)
	again := *recs[5]
	again.Time = again.Time.Add(time.Second)
	recs = append(recs, &again)
	for _, tc := range []struct {
		events  []flow.Event
		samples Samples
		lines   []string // event and partial, line by line
	}{
		{nil, SamplesFull, []string{"open", "sample", "sample", "state", "sample", "sample", "close", "sample"}},
		{[]flow.Event{flow.EventOpen, flow.EventClose}, SamplesFull, []string{"open", "close"}},
		{[]flow.Event{flow.EventSample}, SamplesChanges, []string{"sample", "sample partial", "sample", "sample partial", "sample"}},
		{[]flow.Event{flow.EventSample, flow.EventState}, SamplesChanges, []string{"sample", "sample partial", "state", "sample partial", "sample partial", "sample"}},
	} {
		var out bytes.Buffer
		j := NewJSONL(&out)
		j.SetSamples(tc.samples)
		j.SetEvents(tc.events...)
		var want []*flow.Record
		for _, r := range recs {
			if err := j.Write(r); err != nil {
				t.Fatal(err)
			}
			if len(tc.events) == 0 || slices.Contains(tc.events, r.Event) {
				want = append(want, r)
			}
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		got, partial := readBack(t, out.Bytes())
		sameRecords(t, got, want)
		var lines []string
		for i, r := range got {
			l := r.Event.String()
			if partial[i] {
				l += " partial"
			}
			lines = append(lines, l)
		}
		if !slices.Equal(lines, tc.lines) {
			t.Errorf("events %v, samples %s: lines %q, want %q", tc.events, tc.samples, lines, tc.lines)
		}
	}
}

// sizesWriter keeps what it is given and the size of every write.
type sizesWriter struct {
	bytes.Buffer
	sizes []int
}

func (w *sizesWriter) Write(p []byte) (int, error) {
	w.sizes = append(w.sizes, len(p))
	return w.Buffer.Write(p)
}

// TestJSONLLarge writes more than the buffer holds: the records reach the
// writer in writes of at least bufferSize, byte for byte as AppendJSON
// encodes them.
func TestJSONLLarge(t *testing.T) {
	var w sizesWriter
	j := NewJSONL(&w)
	var want []byte
	r := sample()
	for i := range 1000 {
		r.Cookie = uint64(i)
		r.Time = r.Time.Add(time.Duration(i) * 987654321) // across seconds, for the Encoder's cache
		want = append(AppendJSON(want, r), '\n')
		if err := j.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if len(w.sizes) == 0 {
		t.Fatal("nothing written before Close")
	}
	for _, n := range w.sizes {
		if n < bufferSize {
			t.Errorf("a write of %d bytes before Close, want at least %d", n, bufferSize)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(w.Bytes(), want) {
		t.Error("output differs from AppendJSON's lines")
	}
}

// TestJSONLReopen: log rotation. Reopen writes what is buffered to the
// file renamed away, creates a new file at the path for what follows, and
// starts each flow there with a complete line; a reopen that fails keeps
// the current file and its flows' partial lines.
func TestJSONLReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "records.jsonl")
	j, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	j.SetSamples(SamplesChanges)
	r := sample()
	r.Event = flow.EventSample
	lines := func(path string) []string {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.SplitAfter(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	partial := func(line string) bool { return strings.Contains(line, `"partial":true`) }
	for range 2 {
		if err := j.Write(r); err != nil { // buffered, not flushed
			t.Fatal(err)
		}
	}

	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if ok, err := j.Reopen(); !ok || err != nil {
		t.Fatalf("Reopen = %v, %v; want true, nil", ok, err)
	}
	if got := lines(rotated); len(got) != 2 || partial(got[0]) || !partial(got[1]) {
		t.Errorf("the renamed file holds %q, want the two buffered lines, the second partial", got)
	}

	// The directory is gone: the reopen fails, the current file stays.
	if err := os.Rename(dir, dir+".moved"); err != nil {
		t.Fatal(err)
	}
	if ok, err := j.Reopen(); !ok || err == nil {
		t.Errorf("Reopen with the directory gone = %v, %v; want true and an error", ok, err)
	}
	if err := os.Rename(dir+".moved", dir); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := j.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := lines(path); len(got) != 2 || partial(got[0]) || !partial(got[1]) {
		t.Errorf("the new file holds %q, want a complete line, then a partial one after the failed reopen", got)
	}

	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, err := j.Reopen(); ok || err != nil {
		t.Errorf("Reopen after Close = %v, %v; want false, nil", ok, err)
	}
	if ok, err := NewJSONL(io.Discard).Reopen(); ok || err != nil {
		t.Errorf("Reopen of a writer's JSONL = %v, %v; want false, nil", ok, err)
	}
}
