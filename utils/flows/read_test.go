package flows

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

// testRecords returns two interleaved flows of a few samples each in
// cgroup 77, the second one closing, and named by its cgroup's path from
// its third record on (as the daemon names a cgroup it found late).
func testRecords() []*flow.Record {
	var recs []*flow.Record
	for i := range uint64(6) {
		for _, cookie := range []uint64{1, 2} {
			ev := flow.EventSample
			switch {
			case i == 0:
				ev = flow.EventOpen
			case i == 5 && cookie == 2:
				ev = flow.EventClose
			}
			r := rec("ebpf", ev, cookie, time.Duration(i)*100*time.Millisecond, map[flow.Field]uint64{
				flow.FieldBytesAcked: 1 + i*1000*cookie, flow.FieldSndCwnd: 10, flow.FieldRTT: 500 + i%2,
			})
			r.LocalPort += uint16(cookie)
			if cookie == 2 && i > 1 {
				r.Cgroup = "flowd-test.slice/web.service/workers"
			}
			recs = append(recs, r)
		}
	}
	return recs
}

// encode writes recs as flowd does, with partial samples when changes.
func encode(t testing.TB, recs []*flow.Record, changes bool) []byte {
	t.Helper()
	var b bytes.Buffer
	j := sink.NewJSONL(&b)
	if changes {
		j.SetSamples(sink.SamplesChanges)
	}
	for _, r := range recs {
		if err := j.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var z bytes.Buffer
	w := gzip.NewWriter(&z)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return z.Bytes()
}

func readAll(t *testing.T, srcs []Source, sel *Selection) ([]flow.Record, Stats) {
	t.Helper()
	var out []flow.Record
	st, err := Each(srcs, sel, func(r *flow.Record) error {
		out = append(out, *r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, st
}

func TestReadInputs(t *testing.T) {
	recs := testRecords()
	changes := encode(t, recs, true)
	if !bytes.Contains(changes, []byte(`"partial":true`)) {
		t.Fatal("the test input has no partial line")
	}
	want, _ := readAll(t, []Source{Stdin(bytes.NewReader(encode(t, recs, false)))}, nil)
	if len(want) != len(recs) {
		t.Fatalf("%d records of complete lines, want %d", len(want), len(recs))
	}

	dir := t.TempDir()
	write := func(name string, b []byte, age time.Duration) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Now().Add(-age)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
		return p
	}
	plain := write("flowd.jsonl", changes, 0)
	gz := filepath.Join(t.TempDir(), "out.jsonl.gz")
	if err := os.WriteFile(gz, gzipped(t, changes), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"partial lines", []string{plain}},
		{"gzip'd", []string{gz}},
		{"standard input", []string{"-"}},
		{"gzip'd standard input", []string{"-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := changes
			if strings.HasPrefix(tc.name, "gzip") {
				in = gzipped(t, changes)
			}
			srcs, err := Sources(tc.args, bytes.NewReader(in))
			if err != nil {
				t.Fatal(err)
			}
			got, st := readAll(t, srcs, nil)
			if st.Incomplete != 0 || st.Records != len(recs) {
				t.Errorf("stats %+v", st)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("records differ from the complete lines'")
			}
		})
	}

	// A directory: its rotated files oldest first, other files left out.
	// Rotation starts each flow of the new file with a complete line.
	half := len(recs) / 2
	write("flowd.jsonl.1.gz", gzipped(t, encode(t, recs[:half], true)), time.Hour)
	write("flowd.jsonl", encode(t, recs[half:], true), 0)
	write("notes.txt", []byte("not records"), 0)
	srcs, err := Sources([]string{dir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(srcs) != 2 || filepath.Base(srcs[0].Name) != "flowd.jsonl.1.gz" {
		t.Fatalf("sources %v", srcs)
	}
	got, _ := readAll(t, srcs, nil)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the rotated files read back differently")
	}
}

func TestReadIncomplete(t *testing.T) {
	lines := bytes.SplitAfter(encode(t, testRecords(), true), []byte("\n"))
	// Start after the two open records: partial samples without their
	// flow's earlier line.
	tail := bytes.Join(lines[2:], nil)
	got, st := readAll(t, []Source{Stdin(bytes.NewReader(tail))}, nil)
	if st.Incomplete == 0 || st.IncompleteFlows != 2 || len(got) != len(lines[2:])-1 {
		t.Errorf("stats %+v, %d records", st, len(got))
	}
	if w := st.Warning(); !strings.Contains(w, "2 flows") {
		t.Errorf("warning %q", w)
	}
	if _, err := Load(writeTemp(t, tail)); err == nil || !strings.Contains(err.Error(), ":1: a partial sample of flow") {
		t.Errorf("Load of a partial start: %v", err)
	}
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "x.jsonl")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	bad := writeTemp(t, append(encode(t, testRecords()[:2], false), []byte("{\"time\":\n")...))
	_, err := Each([]Source{File(bad)}, nil, func(*flow.Record) error { return nil })
	if err == nil || !strings.Contains(err.Error(), bad+":3:") {
		t.Errorf("malformed line: %v", err)
	}
	if _, err := Sources([]string{dir}, nil); !errors.Is(err, ErrNoOutput) || !strings.Contains(err.Error(), dir) {
		t.Errorf("empty directory: %v", err)
	}
	if _, err := Sources([]string{"-", "-"}, nil); err == nil {
		t.Error("standard input twice")
	}
	if _, err := Sources([]string{filepath.Join(dir, "nope")}, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	stop := errors.New("stop")
	if _, err := Each([]Source{File(bad)}, nil, func(*flow.Record) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("fn's error: %v", err)
	}
	// Giving up does not wait for an input that is still open (records
	// come in batches: write more than one).
	pr, pw := io.Pipe()
	defer pw.Close()
	one := encode(t, testRecords(), false)
	go pw.Write(bytes.Repeat(one, 2*batchLines/bytes.Count(one, []byte("\n"))))
	if _, err := Each([]Source{Stdin(pr)}, nil, func(*flow.Record) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("fn's error on an open input: %v", err)
	}
}

func TestSelection(t *testing.T) {
	recs := testRecords() // cookie 1 has port 40001, cookie 2 40002
	count := func(sel *Selection) map[uint64]int {
		n := map[uint64]int{}
		for _, r := range recs {
			if sel.Match(r) {
				n[r.Cookie]++
			}
		}
		return n
	}
	for _, tc := range []struct {
		name  string
		flags []string
		want  map[uint64]int
	}{
		{"nothing", nil, map[uint64]int{1: 6, 2: 6}},
		{"cookie", []string{"--cookie", "2"}, map[uint64]int{2: 6}},
		{"local port", []string{"--port", "40001"}, map[uint64]int{1: 6}},
		{"remote port", []string{"--port", "5201"}, map[uint64]int{1: 6, 2: 6}},
		{"ports, comma-separated", []string{"--port", "40002,9"}, map[uint64]int{2: 6}},
		{"address", []string{"--addr", "10.0.0.2"}, map[uint64]int{1: 6, 2: 6}},
		{"v4-mapped prefix", []string{"--addr", "::ffff:10.0.0.0/104"}, map[uint64]int{1: 6, 2: 6}},
		{"other prefix", []string{"--addr", "192.168.0.0/16"}, map[uint64]int{}},
		{"cgroup id", []string{"--cgroup", "77"}, map[uint64]int{1: 6, 2: 6}},
		{"other cgroup id", []string{"--cgroup", "78"}, map[uint64]int{}},
		{"cgroup path", []string{"--cgroup", "flowd-test.slice/web.service"}, map[uint64]int{2: 4}},
		{"other cgroup path", []string{"--cgroup", "flowd-test.slice/web"}, map[uint64]int{}},
		{"and across kinds", []string{"--cookie", "1", "--port", "40002"}, map[uint64]int{}},
		{"relative window", []string{"--since", "150ms", "--until", "300ms"}, map[uint64]int{1: 2, 2: 2}},
		{"absolute window", []string{"--since", t0.Add(400 * time.Millisecond).Format(time.RFC3339Nano)}, map[uint64]int{1: 2, 2: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sel Selection
			fs := newFlagSet()
			sel.AddFlags(fs)
			if err := fs.Parse(tc.flags); err != nil {
				t.Fatal(err)
			}
			if got := count(&sel); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("selected %v, want %v", got, tc.want)
			}
		})
	}
	for _, bad := range [][]string{
		{"--port", "70000"}, {"--cookie", "x"}, {"--addr", "10.0.0.300"}, {"--since", "yesterday"}, {"--until", "-5s"},
	} {
		var sel Selection
		fs := newFlagSet()
		sel.AddFlags(fs)
		if err := fs.Parse(bad); err == nil || !strings.Contains(err.Error(), bad[0]) {
			t.Errorf("%v: %v", bad, err)
		}
	}
}

func TestCgroupMatch(t *testing.T) {
	m, err := ParseCgroup("system.slice/nginx.service/")
	if err != nil {
		t.Fatal(err)
	}
	if m.Path != "system.slice/nginx.service" {
		t.Errorf("path %q", m.Path)
	}
	for p, want := range map[string]bool{
		"system.slice/nginx.service":         true,
		"/system.slice/nginx.service":        true,
		"system.slice/nginx.service/workers": true,
		"system.slice/nginx.service2":        false,
		"system.slice":                       false,
		"":                                   false,
	} {
		if got := m.matches(12345, p); got != want {
			t.Errorf("%q matches %q: %v, want %v", m.Path, p, got, want)
		}
	}
	id, err := ParseCgroup("4242")
	if err != nil || !id.matches(4242, "") || id.matches(4243, "") {
		t.Errorf("id: %+v, %v", id, err)
	}
	if _, err := ParseCgroup(""); err == nil {
		t.Error("empty cgroup accepted")
	}
}

func TestPrefix(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3": "10.1.2.3/32", "::ffff:10.1.2.3": "10.1.2.3/32", "10.1.2.3/8": "10.0.0.0/8", "2001:db8::/32": "2001:db8::/32",
	} {
		p, err := parsePrefix(in)
		if err != nil || p != netip.MustParsePrefix(want) {
			t.Errorf("%s: %v, %v; want %s", in, p, err, want)
		}
	}
}

func newFlagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// BenchmarkEach reads complete lines of every tcp_info member, as the eBPF
// backend writes them; -cpu 1,2 shows what parsing on several CPUs gains.
func BenchmarkEach(b *testing.B) {
	var recs []*flow.Record
	for i := range uint64(20000) {
		r := rec("ebpf", flow.EventSample, 1+i%100, time.Duration(i)*time.Millisecond, nil)
		for f := range flow.NumFields {
			r.Info.Set(f, i*uint64(f+1))
		}
		recs = append(recs, r)
	}
	in := encode(b, recs, false)
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		n := 0
		if _, err := Each([]Source{Stdin(bytes.NewReader(in))}, nil, func(*flow.Record) error {
			n++
			return nil
		}); err != nil || n != len(recs) {
			b.Fatalf("%d records, %v", n, err)
		}
	}
}
