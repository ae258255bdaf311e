package sink

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// faultLog is a Faults that remembers what it heard.
type faultLog struct {
	failures int // Failed calls
	lost     int // records lost, summed over the calls
	lastErr  error
	resumed  int
	mended   []int
}

func (f *faultLog) Mended(_ string, n int) { f.mended = append(f.mended, n) }
func (f *faultLog) Resumed()               { f.resumed++ }
func (f *faultLog) Failed(lost int, err error) {
	f.failures++
	f.lost += lost
	f.lastErr = err
}

// diskWriter takes room bytes more, then fails as a full disk does: a
// write that does not fit is cut short, and the next one fails.
type diskWriter struct {
	bytes.Buffer
	room     int
	failures int
}

func (w *diskWriter) Write(p []byte) (int, error) {
	n := min(len(p), w.room)
	w.Buffer.Write(p[:n])
	w.room -= n
	if n < len(p) {
		w.failures++
		return n, unix.ENOSPC
	}
	return n, nil
}

// parseLines parses every line of b as a record and returns their
// cookies; a line that does not parse fails the test.
func parseLines(t *testing.T, b []byte) []uint64 {
	t.Helper()
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Errorf("the output ends in a partial line: %q", b[max(0, len(b)-40):])
	}
	var cookies []uint64
	s := bufio.NewScanner(bytes.NewReader(b))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		var r flow.Record
		if err := ParseJSON(s.Bytes(), &r); err != nil {
			t.Fatalf("line %d %q: %v", len(cookies)+1, s.Text(), err)
		}
		cookies = append(cookies, r.Cookie)
	}
	return cookies
}

// TestJSONLSurvivesFailingWriter: a writer that fails, after cutting a
// write short in the middle of a line, fails neither Write nor Flush. JSONL
// does not retry before RetryInterval, holds no more than its buffer
// (further records are dropped and told, exactly), and once the writer
// takes bytes again it completes the cut line first: every line of the
// output parses, and the records told lost are those missing.
func TestJSONLSurvivesFailingWriter(t *testing.T) {
	w := &diskWriter{room: 10000}
	faults := &faultLog{}
	j := NewJSONL(w)
	j.SetFaults(faults)
	capacity := cap(j.buf)
	r := sample()
	const records = 5000 // several buffers' worth
	for i := range records {
		r.Cookie = uint64(i)
		if err := j.Write(r); err != nil {
			t.Fatalf("Write %d: %v", i, err)
		}
		if i%100 == 0 {
			if err := j.Flush(); err != nil {
				t.Fatalf("Flush: %v", err)
			}
		}
	}
	if w.failures != 1 {
		t.Errorf("%d failed writes, want 1: no retry was due", w.failures)
	}
	if !errors.Is(faults.lastErr, unix.ENOSPC) || faults.lost == 0 || faults.resumed != 0 {
		t.Fatalf("faults heard: %+v; want ENOSPC, records lost, no resumption", faults)
	}
	if cap(j.buf) != capacity {
		t.Errorf("the buffer grew from %d to %d bytes while the writer failed", capacity, cap(j.buf))
	}

	w.room = 1 << 30 // space again
	j.retryAt = time.Time{}
	if err := j.Flush(); err != nil {
		t.Fatal(err)
	}
	if faults.resumed != 1 {
		t.Errorf("Resumed heard %d times, want 1", faults.resumed)
	}
	r.Cookie = records
	if err := j.Write(r); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	cookies := parseLines(t, w.Bytes())
	if got := len(cookies) + faults.lost; got != records+1 {
		t.Errorf("%d lines written + %d told lost = %d, want the %d records", len(cookies), faults.lost, got, records+1)
	}
	if cookies[len(cookies)-1] != records {
		t.Errorf("the last line is record %d, want %d, written after the fault", cookies[len(cookies)-1], records)
	}
	for i := 1; i < len(cookies); i++ {
		if cookies[i] <= cookies[i-1] {
			t.Fatalf("line %d is record %d after %d: out of order", i+1, cookies[i], cookies[i-1])
		}
	}
}

// TestJSONLChangesAcrossDrops: under SamplesChanges, a dropped record is
// not a line later partial lines refer to: filling the output back in
// gives every written record's values.
func TestJSONLChangesAcrossDrops(t *testing.T) {
	w := &diskWriter{room: 0}
	j := NewJSONL(w)
	faults := &faultLog{}
	j.SetFaults(faults)
	j.SetSamples(SamplesChanges)
	r := sample()
	r.Event = flow.EventSample
	want := map[int]uint64{} // line's rtt, by sequence number in the cookie-less flow
	const records = 30000    // partial lines are short: a buffer holds ~7000
	for i := range records {
		r.Time = r.Time.Add(time.Millisecond)
		r.Info.Set(flow.FieldRTT, uint64(i))
		r.Info.Set(flow.FieldSndCwnd, uint64(i/7)) // changes every 7th record
		if i == records/2 {
			w.room = 1 << 30
			j.retryAt = time.Time{}
		}
		want[i] = uint64(i / 7)
		if err := j.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if faults.lost == 0 {
		t.Fatal("no record was dropped")
	}
	var fill Filler
	s := bufio.NewScanner(bytes.NewReader(w.Bytes()))
	s.Buffer(nil, 1<<20)
	lines := 0
	for s.Scan() {
		var got flow.Record
		partial, err := ParseLine(s.Bytes(), &got)
		if err != nil {
			t.Fatal(err)
		}
		if !fill.Fill(&got, partial) {
			t.Fatalf("line %d: a partial line of a flow with no earlier line", lines+1)
		}
		rtt, _ := got.Info.Get(flow.FieldRTT)
		if cwnd, _ := got.Info.Get(flow.FieldSndCwnd); cwnd != want[int(rtt)] {
			t.Fatalf("record %d: snd_cwnd %d after filling in, want %d", rtt, cwnd, want[int(rtt)])
		}
		lines++
	}
	if lines+faults.lost != records {
		t.Errorf("%d lines + %d lost, want %d records", lines, faults.lost, records)
	}
}

// TestJSONLCloseWhileFailing: Close tells and names the records it could
// not write out.
func TestJSONLCloseWhileFailing(t *testing.T) {
	w := &diskWriter{}
	faults := &faultLog{}
	j := NewJSONL(w)
	j.SetFaults(faults)
	for range 3 {
		if err := j.Write(sample()); err != nil {
			t.Fatal(err)
		}
	}
	err := j.Close()
	if !errors.Is(err, unix.ENOSPC) || !strings.Contains(err.Error(), "3 records not written") {
		t.Errorf("Close = %v, want 3 records not written for ENOSPC", err)
	}
	if faults.lost != 3 {
		t.Errorf("%d records told lost, want 3", faults.lost)
	}
}

// TestFileFullDisk writes lines to a File on a full file system: the write
// that is cut short in the middle of a line leaves no partial line behind
// (n stops at the last whole line), and once space is freed, writing on
// from n gives the file every line once.
func TestFileFullDisk(t *testing.T) {
	dir := testutil.SmallFS(t, 1<<20)
	path := filepath.Join(dir, "records.jsonl")
	o, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	var lines []byte
	for i := range 4000 { // ~200 KB
		lines = append(lines, strings.Repeat("y", i%97)+"\n"...)
	}
	// The first lines take part of a page; the ballast takes every other
	// page, so the next write fits in the rest of that page only.
	first := bytes.IndexByte(lines[1000:], '\n') + 1001
	if n, err := o.Write(lines[:first]); n != first || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, first)
	}
	ballast := testutil.FillFS(t, dir)
	pageRest := os.Getpagesize() - first

	n, err := o.Write(lines[first:])
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("Write to a full file system = %d, %v; want ENOSPC", n, err)
	}
	if n <= 0 || n >= pageRest || lines[first+n-1] != '\n' {
		t.Errorf("Write took %d bytes of the %d the page had left; want the whole lines in them, ending on a newline", n, pageRest)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, lines[:first+n]) {
		t.Fatalf("the file holds %d bytes, ending %q; want the %d bytes of whole lines written", len(b), b[max(0, len(b)-20):], first+n)
	}

	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	if m, err := o.Write(lines[first+n:]); m != len(lines)-first-n || err != nil {
		t.Fatalf("Write after freeing space = %d, %v", m, err)
	}
	if b, err = os.ReadFile(path); err != nil || !bytes.Equal(b, lines) {
		t.Errorf("the file holds %d bytes (%v), want the %d of every line once", len(b), err, len(lines))
	}
}

// TestOpenFileMends: a file that ends in a partial line (a write cut short
// by a crash) loses that line before anything is appended, and Mended says
// how many bytes went; a file that ends with a newline is left alone, and
// one whose last 64 KiB hold no newline is not flowd's and is refused.
func TestOpenFileMends(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		name, content, want string
		mended              int
	}{
		{name: "partial", content: "{\"a\":1}\n{\"b\":2}\n{\"tim", want: "{\"a\":1}\n{\"b\":2}\n", mended: 5},
		{name: "whole", content: "{\"a\":1}\n", want: "{\"a\":1}\n"},
		{name: "empty"},
		{name: "one partial line", content: "{\"ti", mended: 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			o, err := OpenFile(path, FileOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := o.Write([]byte("{\"c\":3}\n")); err != nil {
				t.Fatal(err)
			}
			o.Close()
			if o.Mended() != tt.mended {
				t.Errorf("Mended = %d, want %d", o.Mended(), tt.mended)
			}
			if b, _ := os.ReadFile(path); string(b) != tt.want+"{\"c\":3}\n" {
				t.Errorf("file holds %q, want %q", b, tt.want+"{\"c\":3}\n")
			}
		})
	}

	path := filepath.Join(dir, "binary")
	blob := bytes.Repeat([]byte{'z'}, maxPartialLine+1)
	if err := os.WriteFile(path, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(path, FileOptions{}); err == nil || !strings.Contains(err.Error(), "without a newline") {
		t.Errorf("OpenFile of %d bytes without a newline = %v, want a refusal", len(blob), err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, blob) {
		t.Error("the refused file was changed")
	}
}

// TestJSONLOpenMended: Open tells Faults of a mended file.
func TestJSONLOpenMended(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records.jsonl")
	if err := os.WriteFile(path, []byte("{\"a\":1}\n{\"b"), 0o600); err != nil {
		t.Fatal(err)
	}
	faults := &faultLog{}
	j, err := Open(path, Options{Faults: faults})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if len(faults.mended) != 1 || faults.mended[0] != 3 {
		t.Errorf("Mended heard %v, want [3]", faults.mended)
	}
}

// TestOpenFileMode: a file OpenFile creates has FileOptions.Mode (0600 by
// default), less the umask; a file that exists keeps its own.
func TestOpenFileMode(t *testing.T) {
	umask := unix.Umask(0o022)
	defer unix.Umask(umask)
	dir := t.TempDir()
	for _, tt := range []struct {
		mode, want os.FileMode
	}{{0, 0o600}, {0o640, 0o640}, {0o666, 0o644}} {
		path := filepath.Join(dir, tt.mode.String())
		o, err := OpenFile(path, FileOptions{Mode: tt.mode})
		if err != nil {
			t.Fatal(err)
		}
		o.Close()
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != tt.want {
			t.Errorf("Mode %04o: created %v (%v), want %v", tt.mode, st.Mode(), err, tt.want)
		}
	}
	path := filepath.Join(dir, "existing")
	if err := os.WriteFile(path, nil, 0o604); err != nil {
		t.Fatal(err)
	}
	o, err := OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	o.Close()
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o604 {
		t.Errorf("an existing file's mode became %v, want it kept (-rw----r--)", st.Mode())
	}
}

// TestOpenFileSymlink: a symbolic link at the path is refused unless
// FollowSymlinks, also when it is planted there between two reopens.
func TestOpenFileSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "records.jsonl")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(link, FileOptions{}); !errors.Is(err, ErrSymlink) || !strings.Contains(err.Error(), link) {
		t.Errorf("OpenFile of a symbolic link = %v, want ErrSymlink naming the path", err)
	}
	o, err := OpenFile(link, FileOptions{FollowSymlinks: true})
	if err != nil {
		t.Fatalf("OpenFile with FollowSymlinks: %v", err)
	}
	if _, err := o.Write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	o.Close()
	if b, _ := os.ReadFile(target); string(b) != "secret\n{}\n" {
		t.Errorf("the link's target holds %q, want the line appended", b)
	}

	path := filepath.Join(dir, "plain.jsonl")
	o, err = OpenFile(path, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := o.Reopen(); !errors.Is(err, ErrSymlink) {
		t.Errorf("Reopen onto a planted link = %v, want ErrSymlink", err)
	}
}

// TestJSONLReopenWhileFailing: log rotation while the disk is full. The
// lines that cannot be written to the file renamed away are dropped and
// told, so that flowd lets go of that file, and the new file is written
// at once, each flow starting with a complete line.
func TestJSONLReopenWhileFailing(t *testing.T) {
	dir := testutil.SmallFS(t, 1<<20)
	path := filepath.Join(dir, "records.jsonl")
	faults := &faultLog{}
	j, err := Open(path, Options{Faults: faults})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	j.SetSamples(SamplesChanges)
	r := sample()
	r.Event = flow.EventSample
	write := func(n int) {
		for range n {
			r.Time = r.Time.Add(time.Millisecond)
			if err := j.Write(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := j.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write(10)
	ballast := testutil.FillFS(t, dir)
	write(1000) // more than the rest of the file's page
	if faults.failures == 0 {
		t.Fatal("no write failed on a full file system")
	}
	before := faults.lost

	// Rotation while the disk is still full: the buffered lines cannot go
	// to the renamed file and are dropped once the new one is open.
	buffered := bytes.Count(j.buf, []byte{'\n'})
	if buffered == 0 {
		t.Fatal("nothing buffered")
	}
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if ok, err := j.Reopen(); !ok || err != nil {
		t.Fatalf("Reopen = %v, %v", ok, err)
	}
	if faults.lost != before+buffered {
		t.Errorf("%d records told lost after the reopen, want %d + the %d buffered", faults.lost, before, buffered)
	}
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	write(3)
	if faults.resumed != 1 {
		t.Errorf("Resumed heard %d times, want 1", faults.resumed)
	}
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	n := len(parseLines(t, old)) + len(parseLines(t, cur))
	if n+faults.lost != 1013 {
		t.Errorf("%d lines in the two files + %d told lost, want the 1013 records", n, faults.lost)
	}
	if first, _, _ := strings.Cut(string(cur), "\n"); strings.Contains(first, `"partial":true`) {
		t.Errorf("the new file starts with a partial line: %s", first)
	}
}

// TestOpenFileFIFO: a named pipe as the output is opened for writing only:
// flowd is no reader of its own output, so a reader that goes away is
// EPIPE, not a pipe that fills and blocks the backends.
func TestOpenFileFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	reader := make(chan *os.File, 1)
	go func() {
		r, err := os.Open(fifo)
		if err != nil {
			t.Error(err)
		}
		reader <- r
	}()
	o, err := OpenFile(fifo, FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	r := <-reader
	if _, err := o.Write([]byte("{}\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	if _, err := r.Read(got); err != nil || string(got) != "{}\n" {
		t.Fatalf("the reader got %q, %v", got, err)
	}
	r.Close()
	if _, err := o.Write([]byte("{}\n")); !errors.Is(err, unix.EPIPE) {
		t.Errorf("Write with the reader gone = %v, want EPIPE", err)
	}
}
