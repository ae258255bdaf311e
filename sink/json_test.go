package sink

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
)

// sample returns a record with every field set.
func sample() *flow.Record {
	r := &flow.Record{
		Time:       time.Date(2026, 11, 22, 0, 41, 2, 123456789, time.UTC),
		Backend:    "ebpf",
		Event:      flow.EventState,
		Cookie:     123,
		CgroupID:   456,
		Cgroup:     "system.slice/nginx.service",
		Family:     4,
		LocalAddr:  netip.MustParseAddr("127.0.0.1"),
		RemoteAddr: netip.MustParseAddr("127.0.0.1"),
		LocalPort:  5201,
		RemotePort: 40000,
		State:      flow.StateEstablished,
		OldState:   flow.StateSynSent,
		CA:         "cubic",
		PID:        4711,
		Comm:       "curl",
	}
	for f := range flow.NumFields {
		r.Info.Set(f, uint64(f)*1000+uint64(f))
	}
	r.Info.Set(flow.FieldState, 1)
	r.Info.Set(flow.FieldCAState, 0)
	r.Info.Set(flow.FieldBytesAcked, 1<<63+5) // beyond float64's exact range
	return r
}

func TestAppendJSONGolden(t *testing.T) {
	r := &flow.Record{
		Time:       time.Date(2026, 11, 22, 0, 41, 2, 123456789, time.UTC),
		Backend:    "ebpf",
		Event:      flow.EventState,
		Cookie:     123,
		CgroupID:   456,
		Cgroup:     "system.slice/nginx.service",
		Family:     4,
		LocalAddr:  netip.MustParseAddr("127.0.0.1"),
		RemoteAddr: netip.MustParseAddr("127.0.0.1"),
		LocalPort:  5201,
		RemotePort: 40000,
		State:      flow.StateEstablished,
		OldState:   flow.StateSynSent,
		CA:         "cubic",
	}
	r.Info.Set(flow.FieldState, 1)
	r.Info.Set(flow.FieldCAState, 0)
	r.Info.Set(flow.FieldSndCwnd, 10)
	r.Info.Set(flow.FieldReceivedCEBytes, 18446744073709551615)
	const want = `{"time":"2026-11-22T00:41:02.123456789Z","backend":"ebpf","event":"state","cookie":123,"cgroup_id":456,` +
		`"cgroup":"system.slice/nginx.service","family":4,"laddr":"127.0.0.1","lport":5201,"raddr":"127.0.0.1","rport":40000,"state":"ESTABLISHED",` +
		`"old_state":"SYN_SENT","ca":"cubic","tcp_info":{"state":1,"ca_state":0,"snd_cwnd":10,"received_ce_bytes":18446744073709551615}}`
	if got := string(AppendJSON(nil, r)); got != want {
		t.Errorf("AppendJSON =\n%s\nwant\n%s", got, want)
	}

	// A state record of the ebpf backend in poll mode: no tcp_info; the
	// process that connected the flow.
	r.Info = flow.TCPInfo{}
	r.OldState, r.State = flow.StateEstablished, flow.StateFinWait1
	r.PID, r.Comm = 4711, "curl"
	const wantState = `{"time":"2026-11-22T00:41:02.123456789Z","backend":"ebpf","event":"state","cookie":123,"cgroup_id":456,` +
		`"cgroup":"system.slice/nginx.service","family":4,"laddr":"127.0.0.1","lport":5201,"raddr":"127.0.0.1","rport":40000,"state":"FIN_WAIT1",` +
		`"old_state":"ESTABLISHED","ca":"cubic","pid":4711,"comm":"curl"}`
	if got := string(AppendJSON(nil, r)); got != wantState {
		t.Errorf("AppendJSON =\n%s\nwant\n%s", got, wantState)
	}

	// The close record of the ebpf backend says which state the flow left;
	// one without (netlink's) says nothing.
	r.Event, r.OldState, r.State = flow.EventClose, flow.StateLastAck, flow.StateClose
	r.Info.Set(flow.FieldSndCwnd, 10)
	const wantClose = `{"time":"2026-11-22T00:41:02.123456789Z","backend":"ebpf","event":"close","cookie":123,"cgroup_id":456,` +
		`"cgroup":"system.slice/nginx.service","family":4,"laddr":"127.0.0.1","lport":5201,"raddr":"127.0.0.1","rport":40000,"state":"CLOSE",` +
		`"old_state":"LAST_ACK","ca":"cubic","pid":4711,"comm":"curl","tcp_info":{"snd_cwnd":10}}`
	if got := string(AppendJSON(nil, r)); got != wantClose {
		t.Errorf("AppendJSON =\n%s\nwant\n%s", got, wantClose)
	}
	r.OldState = 0
	if got, want := string(AppendJSON(nil, r)), strings.Replace(wantClose, `"old_state":"LAST_ACK",`, "", 1); got != want {
		t.Errorf("AppendJSON =\n%s\nwant\n%s", got, want)
	}

	// A sample from netlink over IPv6, no CA, no tcp_info.
	r = &flow.Record{
		Time:       time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("CET", 3600)),
		Backend:    "netlink",
		Event:      flow.EventSample,
		Family:     6,
		LocalAddr:  netip.MustParseAddr("::ffff:10.0.0.1"),
		RemoteAddr: netip.MustParseAddr("2001:db8::1"),
		State:      flow.StateCloseWait,
		OldState:   flow.StateEstablished, // not printed: not a state event
	}
	const want2 = `{"time":"2026-01-02T02:04:05.000000006Z","backend":"netlink","event":"sample","cookie":0,"cgroup_id":0,` +
		`"family":6,"laddr":"::ffff:10.0.0.1","lport":0,"raddr":"2001:db8::1","rport":0,"state":"CLOSE_WAIT"}`
	if got := string(AppendJSON(nil, r)); got != want2 {
		t.Errorf("AppendJSON =\n%s\nwant\n%s", got, want2)
	}

	// The open record of a flow found running; existing is said on open
	// records only.
	r.Event, r.Existing = flow.EventOpen, true
	const want3 = `{"time":"2026-01-02T02:04:05.000000006Z","backend":"netlink","event":"open","cookie":0,"existing":true,"cgroup_id":0,` +
		`"family":6,"laddr":"::ffff:10.0.0.1","lport":0,"raddr":"2001:db8::1","rport":0,"state":"CLOSE_WAIT"}`
	if got := string(AppendJSON(nil, r)); got != want3 {
		t.Errorf("AppendJSON =\n%s\nwant\n%s", got, want3)
	}
	r.Event = flow.EventSample
	if got := string(AppendJSON(nil, r)); got != want2 {
		t.Errorf("AppendJSON of a sample with Existing =\n%s\nwant\n%s", got, want2)
	}
}

// TestAppendJSONKeyOrder checks the output is valid JSON with the keys in
// the documented order and the tcp_info members in Field order.
func TestAppendJSONKeyOrder(t *testing.T) {
	b := AppendJSON(nil, sample())
	if !json.Valid(b) {
		t.Fatalf("invalid JSON: %s", b)
	}
	want := []string{"time", "backend", "event", "cookie", "cgroup_id", "cgroup", "family", "laddr", "lport", "raddr", "rport",
		"state", "old_state", "ca", "pid", "comm", "tcp_info"}
	for f := range flow.NumFields {
		want = append(want, f.Name())
	}
	var got []string
	dec := json.NewDecoder(bytes.NewReader(b))
	depth := 0
	expectKey := false
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch tok := tok.(type) {
		case json.Delim:
			if tok == '{' {
				depth++
				expectKey = true
			} else if tok == '}' {
				depth--
				expectKey = true
			}
			continue
		case string:
			if expectKey {
				got = append(got, tok)
				expectKey = false
				continue
			}
		}
		expectKey = true
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("keys =\n%v\nwant\n%v", got, want)
	}
}

func TestAppendJSONStrings(t *testing.T) {
	for _, s := range []string{
		"cubic", "", `a"b`, `back\slash`, "tab\there", "nl\ncr\r", "\x00\x01\x1f\x7f", "bbr\u2028\u2029",
		"héllo wörld ✓ 😀", "bad\xffutf8\xc3", "<html>&amp;",
	} {
		r := sample()
		r.CA = s
		b := AppendJSON(nil, r)
		if !json.Valid(b) {
			t.Errorf("CA %q: invalid JSON: %s", s, b)
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		// encoding/json's reading of the string is the reference.
		var want string
		ref, _ := json.Marshal(s)
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		got, ok := m["ca"].(string)
		if s == "" {
			if ok {
				t.Errorf("empty CA printed as %q", got)
			}
			continue
		}
		if got != want {
			t.Errorf("CA %q decodes as %q, want %q", s, got, want)
		}
		if bytes.ContainsAny(b, "\x00\n\r\t") {
			t.Errorf("CA %q: raw control character in %q", s, b)
		}
	}
}

func TestAppendJSONTime(t *testing.T) {
	for _, tm := range []time.Time{
		{},
		time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2026, 3, 29, 2, 30, 0, 1000, time.FixedZone("X", -7*3600-1800)),
		time.Now(), // with a monotonic reading and the local zone
		time.Date(12026, 1, 1, 0, 0, 0, 0, time.UTC),
	} {
		r := sample()
		r.Time = tm
		var m struct{ Time string }
		if err := json.Unmarshal(AppendJSON(nil, r), &m); err != nil {
			t.Fatal(err)
		}
		if want := tm.UTC().Format("2006-01-02T15:04:05.000000000Z07:00"); m.Time != want {
			t.Errorf("time %v printed as %q, want %q", tm, m.Time, want)
		}
	}
}

func TestAppendJSONAbsentFields(t *testing.T) {
	r := sample()
	r.Info.Clear()
	r.Info.Set(flow.FieldRTT, 0) // present and 0 is not absent
	r.Info.Set(flow.FieldMinRTT, 42)
	r.CA, r.PID, r.Comm, r.OldState = "", 0, "", 0
	r.Event = flow.EventClose
	b := string(AppendJSON(nil, r))
	if !strings.HasSuffix(b, `"state":"ESTABLISHED","tcp_info":{"rtt":0,"min_rtt":42}}`) {
		t.Errorf("got %s", b)
	}
}

func TestEncoderMembers(t *testing.T) {
	r := sample()
	r.Info.Clear()
	r.Info.Set(flow.FieldSndCwnd, 10)
	r.Info.Set(flow.FieldRTT, 25)
	r.Info.Set(flow.FieldLost, 3)
	var e Encoder
	// Listed out of Field order, and one member the record lacks.
	e.SetMembers(flow.FieldSndCwnd, flow.FieldDeliveryRate, flow.FieldRTT)
	b := string(e.AppendJSON(nil, r))
	if !strings.HasSuffix(b, `,"tcp_info":{"rtt":25,"snd_cwnd":10}}`) {
		t.Errorf("with members rtt, snd_cwnd, delivery_rate: %s", b)
	}
	if want := string(AppendJSON(nil, r)); !strings.HasPrefix(b, want[:strings.Index(want, `"tcp_info"`)]) {
		t.Errorf("members changed the keys before tcp_info:\n%s\n%s", b, want)
	}
	e.SetMembers(flow.FieldDeliveryRate)
	if b := string(e.AppendJSON(nil, r)); !strings.HasSuffix(b, `,"tcp_info":{}}`) {
		t.Errorf("with a member the record lacks: %s", b)
	}
	e.SetMembers() // every member again
	if b, want := string(e.AppendJSON(nil, r)), string(AppendJSON(nil, r)); b != want {
		t.Errorf("after SetMembers():\n%s\nwant\n%s", b, want)
	}
}

func TestAppendJSONAllocs(t *testing.T) {
	r := sample()
	buf := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() { buf = AppendJSON(buf[:0], r) }); n != 0 {
		t.Errorf("AppendJSON into a buffer with room: %v allocations, want 0", n)
	}
}

func TestKernelLineStable(t *testing.T) {
	var r flow.Record
	if err := ParseJSON([]byte(kernelLine), &r); err != nil {
		t.Fatal(err)
	}
	if got := string(AppendJSON(nil, &r)); got != kernelLine {
		t.Errorf("re-encoding a real record:\n%s\nwant\n%s", got, kernelLine)
	}
}

func TestRoundTrip(t *testing.T) {
	records := []*flow.Record{sample()}
	r := sample()
	r.Event = flow.EventOpen
	r.OldState = 0
	r.CA = "weird \"ca\"\n"
	r.Family = 6
	r.LocalAddr = netip.MustParseAddr("fe80::1")
	r.RemoteAddr = netip.MustParseAddr("::ffff:192.0.2.1")
	r.Info.Clear()
	r.Info.Set(flow.FieldSndCwnd, 0)
	found := *r
	found.Existing = true
	records = append(records, r, &found, &flow.Record{Time: time.Unix(0, 1).UTC(), Backend: "netlink", Event: flow.EventClose})
	for _, want := range records {
		line := AppendJSON(nil, want)
		var got flow.Record
		if err := ParseJSON(line, &got); err != nil {
			t.Fatalf("ParseJSON(%s): %v", line, err)
		}
		if !got.Time.Equal(want.Time) {
			t.Errorf("time %v, want %v", got.Time, want.Time)
		}
		got.Time = want.Time
		if !reflect.DeepEqual(&got, want) {
			t.Errorf("round trip of %s:\ngot  %+v\nwant %+v", line, got, *want)
		}
	}
}

func TestParseJSONOverwrites(t *testing.T) {
	r := sample()
	line := AppendJSON(nil, &flow.Record{Time: time.Unix(1, 0).UTC(), Backend: "netlink", Event: flow.EventOpen})
	if err := ParseJSON(line, r); err != nil {
		t.Fatal(err)
	}
	if r.Cookie != 0 || r.CA != "" || r.Info.Has(flow.FieldRTT) {
		t.Errorf("ParseJSON kept old values: %+v", r)
	}
}

func TestParseJSONErrors(t *testing.T) {
	good := string(AppendJSON(nil, sample()))
	tests := []struct{ name, line, want string }{
		{"unknown tcp_info member", strings.Replace(good, `"rtt":`, `"rtt_us":`, 1), `unknown member "rtt_us"`},
		{"unknown key", strings.Replace(good, `"cookie":`, `"biscuit":`, 1), `unknown field "biscuit"`},
		{"negative value", strings.Replace(good, `"snd_cwnd":26026`, `"snd_cwnd":-1`, 1), "snd_cwnd"},
		{"fractional value", strings.Replace(good, `"snd_cwnd":26026`, `"snd_cwnd":1.5`, 1), "snd_cwnd: 1.5"},
		{"bad state", strings.Replace(good, `"ESTABLISHED"`, `"ESTABLISHED2"`, 1), `unknown TCP state "ESTABLISHED2"`},
		{"bad event", strings.Replace(good, `"event":"state"`, `"event":"boom"`, 1), `unknown event "boom"`},
		{"old_state on a sample", strings.Replace(good, `"event":"state"`, `"event":"sample"`, 1), "old_state on a sample event"},
		{"old_state on an open record", strings.Replace(good, `"event":"state"`, `"event":"open"`, 1), "old_state on a open event"},
		{"existing on a state event", strings.Replace(good, `"cookie":123,`, `"cookie":123,"existing":true,`, 1), "existing on a state event"},
		{"bad time", strings.Replace(good, `2026-11-22T00:41:02`, `2026-11-22 00:41:02`, 1), "decoding time"},
		{"time out of range in UTC", strings.Replace(good, `2026-11-22T00:41:02.123456789Z`, `0000-01-01T00:00:00+01:00`, 1), "outside years"},
		{"bad address", strings.Replace(good, `"laddr":"127.0.0.1"`, `"laddr":"127.0.0.256"`, 1), "decoding laddr"},
		{"port out of range", strings.Replace(good, `"lport":5201`, `"lport":65536`, 1), "lport"},
		{"missing time", `{"backend":"x","event":"open"}`, "required"},
		{"trailing data", good + `{}`, "data after the object"},
		{"not an object", `[1]`, "decoding record"},
		{"empty", ``, "decoding record"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r flow.Record
			err := ParseJSON([]byte(tt.line), &r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseJSON(%s) error = %v, want one mentioning %q", tt.line, err, tt.want)
			}
		})
	}
	var r flow.Record
	if err := ParseJSON([]byte(good+"\n"), &r); err != nil {
		t.Errorf("a trailing newline: %v", err)
	}
}

// FuzzParse: ParseJSON never panics, and whatever it accepts encodes to a
// line that parses back and encodes the same again.
func FuzzParse(f *testing.F) {
	f.Add(AppendJSON(nil, sample()))
	r := sample()
	r.CA = "a\"\\\x01\u2028\xff"
	r.Event = flow.EventSample
	r.LocalAddr = netip.MustParseAddr("fe80::1%eth0")
	f.Add(AppendJSON(nil, r))
	f.Add([]byte(`{"time":"2026-11-22T00:41:02+05:30","backend":"","event":"unknown","state":"","tcp_info":null}`))
	f.Add([]byte(`{"time":"9999-12-31T23:59:59.9999999999-01:00","backend":"x","event":"close"}`))
	f.Add([]byte(`{"TIME":"2026-11-22T00:41:02Z","Backend":"x","event":"state","old_state":"LISTEN","laddr":"::ffff:1.2.3.4"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var r1 flow.Record
		if err := ParseJSON(line, &r1); err != nil {
			return
		}
		b1 := AppendJSON(nil, &r1)
		if !json.Valid(b1) {
			t.Fatalf("encoding of %q is not JSON: %s", line, b1)
		}
		var r2 flow.Record
		if err := ParseJSON(b1, &r2); err != nil {
			t.Fatalf("re-parsing %s (from %q): %v", b1, line, err)
		}
		if b2 := AppendJSON(nil, &r2); !bytes.Equal(b1, b2) {
			t.Fatalf("unstable encoding of %q:\n%s\n%s", line, b1, b2)
		}
	})
}

// kernelLine is a record the ebpf backend wrote on Linux 6.18: every member
// present, most of them small.
const kernelLine = `{"time":"2026-11-22T00:50:49.365650953Z","backend":"ebpf","event":"open","cookie":4927,"cgroup_id":1,"family":4,"laddr":"127.0.0.1","lport":43744,"raddr":"127.0.0.1","rport":19100,"state":"ESTABLISHED","ca":"bbr","tcp_info":{"state":1,"ca_state":0,"retransmits":0,"probes":0,"backoff":0,"options":7,"snd_wscale":10,"rcv_wscale":10,"delivery_rate_app_limited":1,"fastopen_client_fail":0,"rto":204000,"ato":0,"snd_mss":32741,"rcv_mss":536,"unacked":0,"sacked":0,"lost":0,"retrans":0,"last_data_sent":1623100,"last_data_recv":0,"last_ack_recv":0,"pmtu":65535,"rcv_ssthresh":65495,"rtt":38,"rttvar":19,"snd_ssthresh":2147483647,"snd_cwnd":10,"advmss":65483,"reordering":3,"rcv_rtt":0,"rcv_space":0,"total_retrans":0,"pacing_rate":24623394779,"max_pacing_rate":18446744073709551615,"bytes_acked":1,"bytes_received":0,"segs_out":1,"segs_in":1,"notsent_bytes":0,"min_rtt":38,"data_segs_in":0,"data_segs_out":0,"delivery_rate":0,"busy_time":0,"rwnd_limited":0,"sndbuf_limited":0,"delivered":1,"delivered_ce":0,"bytes_sent":0,"bytes_retrans":0,"dsack_dups":0,"reord_seen":0,"rcv_ooopack":0,"snd_wnd":65483,"rcv_wnd":65495,"rehash":0,"total_rto":0,"total_rto_recoveries":0,"total_rto_time":0,"received_ce":0,"delivered_e1_bytes":0,"delivered_e0_bytes":0,"delivered_ce_bytes":0,"received_e1_bytes":0,"received_e0_bytes":0,"received_ce_bytes":0}}`

func BenchmarkAppendJSON(b *testing.B) {
	var kernel flow.Record
	if err := ParseJSON([]byte(kernelLine), &kernel); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		rec  *flow.Record
	}{
		{"kernel_record", &kernel},
		{"all_fields", sample()},
		{"few_fields", func() *flow.Record {
			r := sample()
			r.Info.Clear()
			for _, f := range []flow.Field{flow.FieldState, flow.FieldRTT, flow.FieldRTTVar,
				flow.FieldSndCwnd, flow.FieldBytesAcked, flow.FieldDeliveryRate} {
				r.Info.Set(f, 123456)
			}
			return r
		}()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 4096)
			for b.Loop() {
				buf = AppendJSON(buf[:0], bc.rec)
			}
			b.SetBytes(int64(len(buf)))
		})
	}
}

// BenchmarkEncodingJSON is the reference: encoding/json on an equivalent map.
func BenchmarkEncodingJSON(b *testing.B) {
	var w wireRecord
	if err := json.Unmarshal(AppendJSON(nil, sample()), &w); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(&w); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAppendUint(t *testing.T) {
	vals := []uint64{0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 65535, 1<<32 - 1, 1 << 32, 9999999999999999999, 10000000000000000000, 1<<64 - 1}
	for p := uint64(1); p < 1e19; p *= 10 {
		vals = append(vals, p-1, p, p+1)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		vals = append(vals, randomUint(rng))
	}
	for _, v := range vals {
		want := "x" + strconv.FormatUint(v, 10)
		if got := string(appendUint([]byte("x"), v)); got != want {
			t.Errorf("appendUint(%d) = %q, want %q", v, got, want)
		}
	}
}

func TestKeysFit(t *testing.T) {
	var keys []string
	for f := range flow.NumFields {
		keys = append(keys, `,"`+f.Name()+`":`)
	}
	for i := range 256 {
		keys = append(keys, `,"event":"`+flow.Event(i).String()+`","cookie":`,
			`,"old_state":"`+flow.State(i).String()+`"`)
	}
	for _, k := range keys {
		if len(k) >= keyWidth { // appendMembers masks lengths with keyWidth-1
			t.Errorf("key %s is %d bytes, keyWidth is %d", k, len(k), keyWidth)
		}
	}
}

func TestDigitCount(t *testing.T) {
	var vals []uint32
	for p := uint64(1); p <= 1<<32; p *= 10 {
		vals = append(vals, uint32(p-1), uint32(p), uint32(p+1))
	}
	for i := range 33 {
		p := uint64(1) << i
		vals = append(vals, uint32(p-1), uint32(p), uint32(p+1))
	}
	for _, x := range vals {
		if got, want := digitCount(x), len(strconv.FormatUint(uint64(x), 10)); got != want {
			t.Errorf("digitCount(%d) = %d, want %d", x, got, want)
		}
	}
}
