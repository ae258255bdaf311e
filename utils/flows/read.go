package flows

import (
	"bufio"
	"bytes"
	"cmp"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

// Source is one input of flowd records: a file, plain or gzip'd, or
// standard input.
type Source struct {
	Name  string    // the file's path, or "standard input"
	stdin io.Reader // set for standard input
}

const stdinName = "standard input"

// Stdin returns the source that reads r as standard input.
func Stdin(r io.Reader) Source { return Source{Name: stdinName, stdin: r} }

// File returns the source that reads the file at path.
func File(path string) Source { return Source{Name: path} }

// IsStdin reports whether s reads standard input (which can be read once).
func (s Source) IsStdin() bool { return s.stdin != nil }

// Sources turns command-line arguments into sources, in the order to read
// them: a file as it is; "-" standard input; a directory, its files whose
// name contains ".jsonl" (flowd.jsonl, flowd.jsonl.1, flowd.jsonl.2.gz),
// oldest first by modification time, so that rotated files come before the
// current one. No argument means standard input.
func Sources(args []string, stdin io.Reader) ([]Source, error) {
	if len(args) == 0 {
		args = []string{"-"}
	}
	var srcs []Source
	usedStdin := false
	for _, arg := range args {
		if arg == "-" {
			if usedStdin {
				return nil, errors.New("standard input (-) given more than once")
			}
			usedStdin = true
			srcs = append(srcs, Stdin(stdin))
			continue
		}
		fi, err := os.Stat(arg)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			srcs = append(srcs, File(arg))
			continue
		}
		files, err := outputFiles(arg)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			srcs = append(srcs, File(f))
		}
	}
	return srcs, nil
}

// ErrNoOutput is returned for a directory that holds no flowd output.
var ErrNoOutput = errors.New("no flowd output here (no file whose name contains .jsonl)")

// outputFiles returns the flowd output files of dir, oldest first.
func outputFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type file struct {
		path    string
		modTime int64
	}
	var files []file
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.Contains(e.Name(), ".jsonl") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		files = append(files, file{filepath.Join(dir, e.Name()), fi.ModTime().UnixNano()})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoOutput)
	}
	slices.SortStableFunc(files, func(a, b file) int {
		if c := cmp.Compare(a.modTime, b.modTime); c != 0 {
			return c
		}
		return strings.Compare(b.path, a.path) // flowd.jsonl.2 before flowd.jsonl.1 at the same time
	})
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.path
	}
	return paths, nil
}

// WriteTo copies the source's bytes, as they are, to w.
func (s Source) WriteTo(w io.Writer) (int64, error) {
	if s.stdin != nil {
		return io.Copy(w, s.stdin)
	}
	f, err := os.Open(s.Name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.Copy(w, f)
}

// gzipMagic starts every gzip stream (RFC 1952).
var gzipMagic = []byte{0x1f, 0x8b}

// open returns the source's bytes, decompressed when they are gzip'd
// (recognised by their first bytes, whatever the name).
func (s Source) open() (io.Reader, func() error, error) {
	var (
		r         io.Reader = s.stdin
		closeFile           = func() error { return nil }
	)
	if s.stdin == nil {
		f, err := os.Open(s.Name)
		if err != nil {
			return nil, nil, err
		}
		r, closeFile = f, f.Close
	}
	br := bufio.NewReaderSize(r, 256<<10)
	head, err := br.Peek(len(gzipMagic))
	if err != nil && !errors.Is(err, io.EOF) {
		closeFile()
		return nil, nil, fmt.Errorf("reading %s: %w", s.Name, err)
	}
	if !bytes.Equal(head, gzipMagic) {
		return br, closeFile, nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		closeFile()
		return nil, nil, fmt.Errorf("reading %s: %w", s.Name, err)
	}
	return bufio.NewReaderSize(zr, 256<<10), closeFile, nil
}

// maxLine is the longest line read: flowd's lines are about 1.5 kB.
const maxLine = 1 << 20

// batchLines is how many lines a parser takes at a time: enough to make
// handing them over cheap, few enough that the batches in flight (two per
// CPU, about 0.6 MB each) stay small.
const batchLines = 256

// batch is lines read in a row from one source and, once parsed, their
// records.
type batch struct {
	src     string
	lineNo  []int // of each line
	lines   [][]byte
	recs    []flow.Record
	partial []bool
	err     error // of the line after the last record, or of reading
	parsed  chan struct{}
}

func (b *batch) parse() {
	b.recs = make([]flow.Record, len(b.lines))
	b.partial = make([]bool, len(b.lines))
	for i, line := range b.lines {
		p, err := sink.ParseLine(line, &b.recs[i])
		if err != nil {
			b.recs, b.partial = b.recs[:i], b.partial[:i]
			b.err = fmt.Errorf("%s:%d: %w", b.src, b.lineNo[i], err)
			break
		}
		b.partial[i] = p
	}
	b.lines = nil
	close(b.parsed)
}

// Reader reads the records of sources one after another, and completes
// partial samples (output.samples: changes) from the earlier lines of
// their flow, as flowd fill does. Give the files of one output oldest
// first. Parsing, what reading costs most, runs on every CPU; records come
// out in input order.
type Reader struct {
	srcs    []Source
	batches chan *batch // in input order, parsed or being parsed
	stop    chan struct{}
	cur     *batch
	next    int // index in cur of the next record
	filler  sink.Filler
	err     error
}

// NewReader returns a Reader of srcs.
func NewReader(srcs []Source) *Reader { return &Reader{srcs: srcs} }

// start runs the reading goroutine, which splits the sources into batches,
// and the parsers.
func (rd *Reader) start() {
	workers := runtime.GOMAXPROCS(0)
	// A batch is in both channels: at most 2*workers+2 exist at a time.
	rd.batches = make(chan *batch, 2*workers)
	rd.stop = make(chan struct{})
	work := make(chan *batch, 2*workers)
	for range workers {
		go func() {
			for b := range work {
				b.parse()
			}
		}()
	}
	stop := rd.stop
	go func() {
		defer close(rd.batches)
		defer close(work)
		send := func(b *batch) bool {
			select {
			case rd.batches <- b:
			case <-stop:
				return false
			}
			if b.err == nil {
				work <- b
			} else {
				close(b.parsed)
			}
			return true
		}
		for _, src := range rd.srcs {
			if !rd.split(src, send) {
				return
			}
		}
	}()
}

// split reads src into batches and hands them to send, which reports false
// when the Reader is closed. A batch that ends src with an error carries it.
func (rd *Reader) split(src Source, send func(*batch) bool) bool {
	newBatch := func() *batch { return &batch{src: src.Name, parsed: make(chan struct{})} }
	in, closeSrc, err := src.open()
	if err != nil {
		b := newBatch()
		b.err = err
		send(b)
		return false
	}
	defer closeSrc()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	b := newBatch()
	for n := 1; sc.Scan(); n++ {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		b.lines = append(b.lines, bytes.Clone(line))
		b.lineNo = append(b.lineNo, n)
		if len(b.lines) == batchLines {
			if !send(b) {
				return false
			}
			b = newBatch()
		}
	}
	if err := sc.Err(); err != nil {
		// The lines before the error are parsed first.
		if len(b.lines) > 0 && !send(b) {
			return false
		}
		b = newBatch()
		b.err = fmt.Errorf("reading %s: %w", src.Name, err)
		send(b)
		return false
	}
	return len(b.lines) == 0 || send(b)
}

// Next reads the next record into r. complete is false for a partial sample
// whose flow had no earlier line (input that starts in the middle of an
// output): r then holds only what its line had. At the end Next returns
// io.EOF. Errors name the source and line.
func (rd *Reader) Next(r *flow.Record) (complete bool, err error) {
	if rd.err != nil {
		return false, rd.err
	}
	if rd.batches == nil {
		rd.start()
	}
	for rd.cur == nil || rd.next == len(rd.cur.recs) {
		if rd.cur != nil && rd.cur.err != nil {
			rd.err = rd.cur.err
			rd.Close()
			return false, rd.err
		}
		b, ok := <-rd.batches
		if !ok {
			rd.err = io.EOF
			return false, io.EOF
		}
		<-b.parsed
		rd.cur, rd.next = b, 0
	}
	*r = rd.cur.recs[rd.next]
	partial := rd.cur.partial[rd.next]
	rd.next++
	return rd.filler.Fill(r, partial), nil
}

// Position returns the source and line of the record Next read last.
func (rd *Reader) Position() string {
	if rd.cur == nil || rd.next == 0 {
		return ""
	}
	return fmt.Sprintf("%s:%d", rd.cur.src, rd.cur.lineNo[rd.next-1])
}

// Close stops reading: the reading goroutine closes the source it reads
// and ends at its next line (for standard input, when one arrives). Call it
// when giving up before the end.
func (rd *Reader) Close() error {
	if rd.stop != nil {
		close(rd.stop)
		rd.stop = nil
	}
	if rd.err == nil {
		rd.err = errReaderClosed
	}
	return nil
}

var errReaderClosed = errors.New("reader closed")

// Stats counts what Each read.
type Stats struct {
	Records  int // records read
	Selected int // records passed to fn
	// Incomplete counts partial samples that had no earlier line of their
	// flow and so lack the members they did not repeat, and the flows
	// they belong to.
	Incomplete, IncompleteFlows int
}

// Each reads srcs and calls fn with every record that sel selects (every
// record when sel is nil), in input order. fn must not keep r.
func Each(srcs []Source, sel *Selection, fn func(r *flow.Record) error) (Stats, error) {
	var (
		st         Stats
		r          flow.Record
		incomplete = map[Key]bool{}
	)
	rd := NewReader(srcs)
	defer rd.Close()
	for {
		complete, err := rd.Next(&r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return st, err
		}
		st.Records++
		if !complete {
			st.Incomplete++
			incomplete[KeyOf(&r)] = true
		}
		if !sel.Match(&r) {
			continue
		}
		st.Selected++
		if err := fn(&r); err != nil {
			return st, err
		}
	}
	st.IncompleteFlows = len(incomplete)
	return st, nil
}

// Warning describes what the reading could not do, or is "".
func (st Stats) Warning() string {
	if st.Incomplete == 0 {
		return ""
	}
	return fmt.Sprintf("%d partial samples of %d flows had no earlier line of their flow (input that starts in the middle of an output): "+
		"their members that did not change are unknown", st.Incomplete, st.IncompleteFlows)
}
