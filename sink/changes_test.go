package sink

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
)

// readBack parses and fills the lines of out, failing on any error, and
// returns the records and which lines were partial.
func readBack(t *testing.T, out []byte) ([]flow.Record, []bool) {
	t.Helper()
	var (
		recs    []flow.Record
		partial []bool
		f       Filler
	)
	s := bufio.NewScanner(bytes.NewReader(out))
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		var r flow.Record
		p, err := ParseLine(s.Bytes(), &r)
		if err != nil {
			t.Fatalf("line %s: %v", s.Bytes(), err)
		}
		if !f.Fill(&r, p) {
			t.Fatalf("line %s: partial without an earlier line of its flow", s.Bytes())
		}
		recs = append(recs, r)
		partial = append(partial, p)
	}
	return recs, partial
}

func sameRecords(t *testing.T, got []flow.Record, want []*flow.Record) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d records read back, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], *want[i]
		if !g.Time.Equal(w.Time) {
			t.Errorf("record %d: time %v, want %v", i, g.Time, w.Time)
		}
		g.Time = w.Time
		if !reflect.DeepEqual(g, w) {
			t.Errorf("record %d read back as\n%+v\nwant\n%+v", i, g, w)
		}
	}
}

func TestSamplesChangesLines(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	open := sample()
	open.Event, open.OldState, open.Time = flow.EventOpen, 0, t0
	at := func(d time.Duration, change func(r *flow.Record)) *flow.Record {
		r := *open
		r.Event, r.Time = flow.EventSample, t0.Add(d)
		if change != nil {
			change(&r)
		}
		return &r
	}
	rtt := func(v uint64) func(*flow.Record) {
		return func(r *flow.Record) { r.Info.Set(flow.FieldRTT, v) }
	}
	netlinkOpen := *open
	netlinkOpen.Backend = "netlink"
	state := at(3*time.Second, nil)
	state.Event, state.State, state.OldState = flow.EventState, flow.StateFinWait1, flow.StateEstablished
	// State records of the ebpf backend in poll mode: no tcp_info, or
	// (from another backend) a few members.
	slim := at(3600*time.Millisecond, nil)
	slim.Event, slim.State, slim.OldState = flow.EventState, flow.StateFinWait2, flow.StateFinWait1
	slim.Info = flow.TCPInfo{}
	few := at(3700*time.Millisecond, nil)
	few.Event, few.State, few.OldState = flow.EventState, flow.StateTimeWait, flow.StateFinWait2
	few.Info = flow.TCPInfo{}
	few.Info.Set(flow.FieldRTT, 5)
	few.Info.Set(flow.FieldBytesAcked, 1<<40) // past 32 bits, in a 64-bit member
	closed := at(4*time.Second, nil)
	closed.Event, closed.State = flow.EventClose, flow.StateClose

	type step struct {
		r       *flow.Record
		partial bool
		members string // the tcp_info of a partial line
	}
	steps := []step{
		{open, false, ""},
		{at(time.Millisecond, rtt(7)), true, `{"rtt":7}`},
		{at(2*time.Millisecond, rtt(7)), true, `{}`},
		{&netlinkOpen, false, ""}, // the same socket from the other backend: its own series
		{at(3*time.Millisecond, func(r *flow.Record) {
			r.Info.Set(flow.FieldSndCwnd, 10)
			r.Info.Set(flow.FieldBytesAcked, 99)
		}), true, `{"rtt":23023,"snd_cwnd":10,"bytes_acked":99}`}, // rtt is back to open's
		{at(4*time.Millisecond, func(r *flow.Record) { // a member goes away: complete
			r.Info.Present.Clear(flow.FieldRTT)
			r.Info.Values[flow.FieldRTT] = 0
		}), false, ""},
		{at(5*time.Millisecond, nil), true, `{"rtt":23023}`}, // and comes back
		{at(6*time.Millisecond, func(r *flow.Record) { r.CA = "bbr" }), false, ""},
		{at(7*time.Millisecond, func(r *flow.Record) { r.CA = "bbr" }), true, `{}`},
		// The last complete line was at 6 ms: CompleteEvery after it, complete again.
		{at(6*time.Millisecond+CompleteEvery-1, func(r *flow.Record) { r.CA = "bbr" }), true, `{}`},
		{at(6*time.Millisecond+CompleteEvery, func(r *flow.Record) { r.CA = "bbr" }), false, ""},
		{at(6*time.Millisecond+CompleteEvery+1, func(r *flow.Record) { r.CA = "bbr" }), true, `{}`},
		{at(time.Second, nil), false, ""}, // the clock went back, and the CA is open's again
		{at(time.Second, nil), true, `{}`},
		{at(1100*time.Millisecond, func(r *flow.Record) { r.Cgroup = "" }), false, ""}, // a path not known (yet)
		{at(1200*time.Millisecond, func(r *flow.Record) { r.Cgroup = "" }), true, `{}`},
		{at(1300*time.Millisecond, nil), false, ""}, // found: complete, to say so
		{at(1400*time.Millisecond, nil), true, `{}`},
		{state, false, ""},
		// A sample after a state record: partial, and it reads back
		// without the state record's old_state.
		{at(3500*time.Millisecond, func(r *flow.Record) { r.State = flow.StateFinWait1 }), true, `{}`},
		// A state record without members changes what a sample is
		// compared with only in its header: the sample after it is
		// partial, compared with the sample before it.
		{slim, false, ""},
		{at(3650*time.Millisecond, func(r *flow.Record) {
			r.State = flow.StateFinWait2
			r.Info.Set(flow.FieldSndCwnd, 11)
		}), true, `{"snd_cwnd":11}`},
		// A state record's members replace what the flow's next sample is
		// compared with; the others stay.
		{few, false, ""},
		{at(3750*time.Millisecond, func(r *flow.Record) {
			r.State = flow.StateTimeWait
			r.Info.Set(flow.FieldSndCwnd, 11)
		}), true, `{"rtt":23023,"bytes_acked":9223372036854775813}`},
		{closed, false, ""},
		{at(5*time.Second, nil), false, ""}, // after close, the flow is new
	}

	var out bytes.Buffer
	j := NewJSONL(&out)
	j.SetSamples(SamplesChanges)
	var want []*flow.Record
	for _, s := range steps {
		if err := j.Write(s.r); err != nil {
			t.Fatal(err)
		}
		want = append(want, s.r)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	recs, partial := readBack(t, out.Bytes())
	sameRecords(t, recs, want)
	for i, s := range steps {
		if partial[i] != s.partial {
			t.Errorf("step %d: partial %v, want %v: %s", i, partial[i], s.partial, lines[i])
			continue
		}
		if !s.partial {
			if lines[i] != string(AppendJSON(nil, s.r)) {
				t.Errorf("step %d: complete line %s\nwant %s", i, lines[i], AppendJSON(nil, s.r))
			}
			continue
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(lines[i]), &m); err != nil {
			t.Fatal(err)
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		if want := []string{"backend", "cookie", "event", "partial", "tcp_info", "time"}; !slices.Equal(keys, want) {
			t.Errorf("step %d: keys %v, want %v: %s", i, keys, want, lines[i])
		}
		if got := string(m["tcp_info"]); got != s.members {
			t.Errorf("step %d: tcp_info %s, want %s", i, got, s.members)
		}
	}
}

// TestSamplesChangesRoundTrip writes random series of several flows of two
// backends, with members that change, vanish and come back, headers that
// change and flows that close, and reads them back: a Filler must give
// every record exactly as it was written.
func TestSamplesChangesRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	type testFlow struct{ r flow.Record }
	flows := make([]*testFlow, 6)
	newFlow := func(i int) *testFlow {
		r := *sample()
		r.Backend = []string{"ebpf", "netlink"}[i%2]
		r.Cookie = uint64(i/2 + 1)
		r.Event, r.OldState = flow.EventOpen, 0
		return &testFlow{r}
	}
	for i := range flows {
		flows[i] = newFlow(i)
	}
	var (
		out  bytes.Buffer
		want []*flow.Record
		now  = t0
	)
	j := NewJSONL(&out)
	j.SetSamples(SamplesChanges)
	for range 5000 {
		i := rng.IntN(len(flows))
		f := flows[i]
		now = now.Add(time.Duration(rng.IntN(int(time.Second))))
		r := f.r
		r.Time, r.Event, r.OldState = now, flow.EventSample, 0
		switch n := rng.IntN(100); {
		case n < 60: // a few members change
			for range rng.IntN(4) {
				v := uint64(rng.IntN(3))
				if rng.IntN(100) == 0 { // past 32 bits, in any member
					v += 1 << 32
				}
				r.Info.Set(flow.Field(rng.IntN(int(flow.NumFields))), v)
			}
		case n < 65: // one goes away, or comes back
			fld := flow.Field(rng.IntN(int(flow.NumFields)))
			if r.Info.Has(fld) {
				r.Info.Present.Clear(fld)
				r.Info.Values[fld] = 0
			} else {
				r.Info.Set(fld, 1)
			}
		case n < 67:
			r.CA = []string{"cubic", "bbr", "reno"}[rng.IntN(3)]
		case n < 68:
			r.Cgroup = []string{"", "/", "system.slice/nginx.service"}[rng.IntN(3)]
		case n < 71:
			r.Event, r.OldState, r.State = flow.EventState, r.State, flow.State(1+rng.IntN(11))
		case n < 73:
			r.Event = flow.EventClose
		}
		// Half the state records hold no members, or a few, as the ebpf
		// backend's in poll mode: the flow keeps its other values.
		next := r
		if r.Event == flow.EventState && rng.IntN(2) == 0 {
			r.Info = flow.TCPInfo{}
			for range rng.IntN(3) {
				fld := flow.Field(rng.IntN(int(flow.NumFields)))
				v := uint64(rng.IntN(3))
				if rng.IntN(10) == 0 {
					v += 1 << 32
				}
				r.Info.Set(fld, v)
				next.Info.Set(fld, v)
			}
		}
		if err := j.Write(&r); err != nil {
			t.Fatal(err)
		}
		w := r
		want = append(want, &w)
		f.r = next
		if r.Event == flow.EventClose {
			flows[i] = newFlow(i)
			flows[i].r.Cookie += uint64(len(want)) * 8 // a new socket
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	recs, partial := readBack(t, out.Bytes())
	sameRecords(t, recs, want)
	n := 0
	for _, p := range partial {
		if p {
			n++
		}
	}
	if n < len(partial)/3 {
		t.Errorf("only %d of %d lines partial", n, len(partial))
	}
	t.Logf("%d lines, %d partial, %d bytes", len(partial), n, out.Len())
}

// changesSink returns a JSONL writing partial samples to out, and a sample
// record.
func changesSink(out io.Writer) (*JSONL, *flow.Record) {
	j := NewJSONL(out)
	j.SetSamples(SamplesChanges)
	r := sample()
	r.Event = flow.EventSample
	return j, r
}

func TestFillerWithoutEarlierLine(t *testing.T) {
	var out bytes.Buffer
	j, r := changesSink(&out)
	for range 2 {
		if err := j.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n"))
	var (
		f   Filler
		got flow.Record
	)
	partial, err := ParseLine(lines[1], &got)
	if err != nil || !partial {
		t.Fatalf("second line %s: partial %v, %v", lines[1], partial, err)
	}
	if f.Fill(&got, partial) {
		t.Errorf("Fill of a partial line whose flow it has not seen reported true")
	}
	if got.Info.Has(flow.FieldRTT) || got.LocalPort != 0 {
		t.Errorf("Fill made up values: %+v", got)
	}
}

// TestFillerStateRecords checks that a state record is printed as it was
// written, whatever the flow's lines before it held, and that a reader that
// starts at a state record does not take the flow for known.
func TestFillerStateRecords(t *testing.T) {
	var out bytes.Buffer
	j, r := changesSink(&out)
	r.OldState = 0
	open := *r
	open.Event = flow.EventOpen
	state := *r
	state.Event, state.OldState, state.State = flow.EventState, flow.StateEstablished, flow.StateFinWait1
	state.Info = flow.TCPInfo{}
	state.Info.Set(flow.FieldRTT, 9)
	sample := *r
	sample.State = flow.StateFinWait1
	sample.Info.Set(flow.FieldRTT, 9)
	for _, rec := range []*flow.Record{&open, &state, &sample} {
		if err := j.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Flush(); err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(out.Bytes()), []byte("\n"))
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3", len(lines))
	}
	if !bytes.Equal(lines[1], AppendJSON(nil, &state)) {
		t.Errorf("state line %s\nwant %s", lines[1], AppendJSON(nil, &state))
	}
	recs, partial := readBack(t, out.Bytes())
	if partial[1] || !partial[2] {
		t.Fatalf("partial lines %v, want [false false true]", partial)
	}
	if recs[1].Info != state.Info {
		t.Errorf("state record filled: %v members, want 1", recs[1].Info.Present)
	}
	sameRecords(t, recs, []*flow.Record{&open, &state, &sample})

	// From the state line on, the partial sample cannot be completed.
	var f Filler
	for i, line := range lines[1:] {
		var got flow.Record
		p, err := ParseLine(line, &got)
		if err != nil {
			t.Fatal(err)
		}
		if ok := f.Fill(&got, p); ok != (i == 0) {
			t.Errorf("line %d: Fill = %v", i+2, ok)
		}
	}
}

func TestParseLinePartialOnlyOnSamples(t *testing.T) {
	line := []byte(`{"time":"2026-12-05T06:00:00.000000000Z","backend":"ebpf","event":"open","cookie":1,"partial":true,"tcp_info":{}}`)
	var r flow.Record
	if _, err := ParseLine(line, &r); err == nil || !strings.Contains(err.Error(), "partial on a open event") {
		t.Errorf("ParseLine(%s): %v, want an error about partial", line, err)
	}
	line = bytes.Replace(line, []byte(`"open"`), []byte(`"sample"`), 1)
	if p, err := ParseLine(line, &r); err != nil || !p {
		t.Errorf("ParseLine(%s) = %v, %v; want true, nil", line, p, err)
	}
}

func TestChangesForget(t *testing.T) {
	var c changes
	r := sample()
	r.Event = flow.EventSample
	t0 := r.Time
	for i := range 3 {
		r.Cookie = uint64(i)
		c.unchanged(r)
	}
	r.Cookie = 0
	r.Time = t0.Add(forgetAfter / 2)
	c.unchanged(r) // flow 0 seen again; 1 and 2 not
	r.Cookie = 9
	r.Time = t0.Add(forgetAfter)
	c.unchanged(r) // sweeps
	var left []uint64
	for _, b := range c.backends {
		for cookie := range b.flows {
			left = append(left, cookie)
		}
	}
	slices.Sort(left)
	if !slices.Equal(left, []uint64{0, 9}) {
		t.Errorf("flows remembered after a minute: %v, want [0 9]", left)
	}
}

func TestJSONLChangesAllocs(t *testing.T) {
	j, r := changesSink(io.Discard)
	if err := j.Write(r); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		r.Time = r.Time.Add(time.Microsecond)
		r.Info.Values[flow.FieldRTT]++
		if err := j.Write(r); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("a partial sample of a known flow: %v allocations, want 0", n)
	}
}

// BenchmarkJSONLWrite: a sample of a bulk flow, as every line or as its
// changes (ten members, as between two RTT samples), with the bytes of a
// line.
func BenchmarkJSONLWrite(b *testing.B) {
	for _, s := range []Samples{SamplesFull, SamplesChanges} {
		b.Run("samples="+s.String(), func(b *testing.B) {
			var w countingWriter
			j := NewJSONL(&w)
			j.SetSamples(s)
			r := sample()
			r.Event = flow.EventSample
			changing := []flow.Field{flow.FieldRTT, flow.FieldBytesAcked, flow.FieldBytesSent,
				flow.FieldSegsOut, flow.FieldSegsIn, flow.FieldDataSegsOut, flow.FieldDelivered,
				flow.FieldDeliveryRate, flow.FieldPacingRate, flow.FieldUnacked}
			b.ReportAllocs()
			for b.Loop() {
				r.Time = r.Time.Add(25 * time.Microsecond)
				for _, f := range changing {
					v := r.Info.Values[f] + 1448
					if !slices.Contains(wideFields[:], f) {
						v = uint64(uint32(v)) // as the kernel's 32-bit counters wrap
					}
					r.Info.Values[f] = v
				}
				if err := j.Write(r); err != nil {
					b.Fatal(err)
				}
			}
			if err := j.Flush(); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(w.n)/float64(b.N), "bytes/line")
		})
	}
}

// countingWriter counts what it is given.
type countingWriter struct{ n int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	return len(p), nil
}
