package ebpf

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// TestLayout checks that bpf2go's Go structs have the C structs' sizes and
// member offsets, and that the C structs have no implicit padding.
func TestLayout(t *testing.T) {
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		goT  reflect.Type
	}{
		{"flowd_record", reflect.TypeOf(bpfFlowdRecord{})},
		{"flowd_head", reflect.TypeOf(bpfFlowdHead{})},
		{"flowd_tcp_info", reflect.TypeOf(bpfFlowdTcpInfo{})},
		{"flowd_cidr_key", reflect.TypeOf(bpfFlowdCidrKey{})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st *btf.Struct
			if err := spec.Types.TypeByName(tc.name, &st); err != nil {
				t.Fatalf("struct %s not in the object's BTF: %v", tc.name, err)
			}
			if uintptr(st.Size) != tc.goT.Size() {
				t.Fatalf("size: C %d, Go %d", st.Size, tc.goT.Size())
			}
			var goFields []reflect.StructField
			for i := 0; i < tc.goT.NumField(); i++ {
				if f := tc.goT.Field(i); f.Name != "_" {
					goFields = append(goFields, f)
				}
			}
			if len(goFields) != len(st.Members) {
				t.Fatalf("members: C %d, Go %d", len(st.Members), len(goFields))
			}
			var end uint32
			for i, m := range st.Members {
				off := m.Offset.Bytes()
				if uintptr(off) != goFields[i].Offset {
					t.Errorf("%s: C offset %d, Go %s offset %d", m.Name, off, goFields[i].Name, goFields[i].Offset)
				}
				if off != end {
					t.Errorf("implicit padding of %d bytes before %s", off-end, m.Name)
				}
				size, err := btf.Sizeof(m.Type)
				if err != nil {
					t.Fatal(err)
				}
				end = off + uint32(size)
			}
			if end != st.Size {
				t.Errorf("implicit padding of %d bytes at the end", st.Size-end)
			}
			if st.Size%8 != 0 && tc.name != "flowd_cidr_key" {
				t.Errorf("size %d is not a multiple of 8", st.Size)
			}
		})
	}
}

// TestEnumsMatch checks that the C enums number events and fields as the
// shared Go package does.
func TestEnumsMatch(t *testing.T) {
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	var fields *btf.Enum
	if err := spec.Types.TypeByName("flowd_field", &fields); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, v := range fields.Values {
		name := strings.ToLower(strings.TrimPrefix(v.Name, "FLOWD_F_"))
		if v.Name == "FLOWD_NUM_FIELDS" {
			if v.Value != uint64(flow.NumFields) {
				t.Errorf("FLOWD_NUM_FIELDS = %d, flow.NumFields = %d", v.Value, flow.NumFields)
			}
			continue
		}
		f, ok := flow.FieldByName(name)
		if !ok {
			t.Errorf("C field %s has no Go counterpart", v.Name)
			continue
		}
		if uint64(f) != v.Value {
			t.Errorf("%s: C %d, Go %d", name, v.Value, f)
		}
		seen++
	}
	if seen != int(flow.NumFields) {
		t.Errorf("C has %d fields, Go %d", seen, flow.NumFields)
	}

	var events *btf.Enum
	if err := spec.Types.TypeByName("flowd_event", &events); err != nil {
		t.Fatal(err)
	}
	for _, v := range events.Values {
		name := strings.ToLower(strings.TrimPrefix(v.Name, "FLOWD_EVENT_"))
		if ev, ok := flow.ParseEvent(name); !ok || uint64(ev) != v.Value {
			t.Errorf("event %s: C %d, Go %d (%v)", name, v.Value, ev, ok)
		}
	}
}

func rawRecord(k *bpfFlowdRecord) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(k)), recordSize)
}

func putCString(dst *[16]int8, s string) {
	*dst = [16]int8{}
	for i, c := range []byte(s) {
		dst[i] = int8(c)
	}
}

func TestDecode(t *testing.T) {
	k := bpfFlowdRecord{Head: bpfFlowdHead{
		TimestampNs: 5_000_000_000,
		Cookie:      0x1122334455667788,
		CgroupId:    4242,
		Lport:       5201,
		Rport:       40000,
		Family:      afInet,
		Event:       uint8(flow.EventOpen),
		NewState:    uint8(flow.StateEstablished),
		Pid:         31337,
	}}
	h := &k.Head
	copy(h.Laddr[:], []byte{10, 0, 0, 1})
	copy(h.Raddr[:], []byte{10, 0, 0, 2})
	putCString(&h.Ca, "cubic")
	putCString(&h.Comm, "curl")
	k.Info.Rtt = 52
	k.Info.SndCwnd = 10
	k.Info.BytesAcked = 1 << 40
	k.Info.TotalRtoTime = 7
	k.Present[0] = 1<<flow.FieldRTT | 1<<flow.FieldSndCwnd | 1<<flow.FieldBytesAcked
	// total_rto_time is absent: its value must not leak through.

	d := decoder{monoToWall: 1_700_000_000_000_000_000}
	var r flow.Record
	r.Info.Set(flow.FieldTotalRTOTime, 99) // stale value from a reused record
	if err := d.decode(rawRecord(&k), &r); err != nil {
		t.Fatal(err)
	}
	want := flow.Record{
		Time:       time.Unix(0, 1_700_000_005_000_000_000).UTC(),
		Backend:    "ebpf",
		Event:      flow.EventOpen,
		Cookie:     0x1122334455667788,
		CgroupID:   4242,
		Family:     4,
		LocalAddr:  netip.MustParseAddr("10.0.0.1"),
		RemoteAddr: netip.MustParseAddr("10.0.0.2"),
		LocalPort:  5201,
		RemotePort: 40000,
		State:      flow.StateEstablished,
		CA:         "cubic",
		PID:        31337,
		Comm:       "curl",
	}
	want.Info.Set(flow.FieldRTT, 52)
	want.Info.Set(flow.FieldSndCwnd, 10)
	want.Info.Set(flow.FieldBytesAcked, 1<<40)
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", r, want)
	}

	// A state record in poll mode is the head alone: no tcp_info, and
	// nothing left of the record decoded before.
	h.Event, h.OldState, h.NewState = uint8(flow.EventState), uint8(flow.StateEstablished), uint8(flow.StateFinWait1)
	if err := d.decode(rawRecord(&k)[:headSize], &r); err != nil {
		t.Fatal(err)
	}
	want.Event, want.State, want.OldState = flow.EventState, flow.StateFinWait1, flow.StateEstablished
	want.Info = flow.TCPInfo{}
	if !reflect.DeepEqual(r, want) {
		t.Fatalf("head alone decoded\n%+v\nwant\n%+v", r, want)
	}

	// A close record says which state the flow left.
	h.Event, h.OldState, h.NewState = uint8(flow.EventClose), uint8(flow.StateLastAck), uint8(flow.StateClose)
	if err := d.decode(rawRecord(&k), &r); err != nil || r.OldState != flow.StateLastAck || r.State != flow.StateClose {
		t.Fatalf("close record decoded in %s from %s (%v)", r.State, r.OldState, err)
	}

	// A process name is there only with its pid.
	h.Pid = 0
	if err := d.decode(rawRecord(&k), &r); err != nil || r.PID != 0 || r.Comm != "" {
		t.Fatalf("record without a pid decoded with pid %d, comm %q (%v)", r.PID, r.Comm, err)
	}

	h.Family = afInet6
	h.Event, h.OldState = uint8(flow.EventSample), uint8(flow.StateFinWait1)
	copy(h.Laddr[:], netip.MustParseAddr("2001:db8::1").AsSlice())
	if err := d.decode(rawRecord(&k), &r); err != nil {
		t.Fatal(err)
	}
	if r.Family != 6 || r.LocalAddr != netip.MustParseAddr("2001:db8::1") || r.OldState != 0 || r.Info.Present.IsEmpty() {
		t.Fatalf("IPv6 sample decoded as %+v", r)
	}

	// The existing flag means something on open records only.
	h.Flags = uint8(bpfFlowdRecordFlagFLOWD_RECORD_EXISTING)
	if err := d.decode(rawRecord(&k), &r); err != nil || r.Existing {
		t.Fatalf("sample with the existing flag decoded as existing = %v (%v)", r.Existing, err)
	}
	h.Event = uint8(flow.EventOpen)
	if err := d.decode(rawRecord(&k), &r); err != nil || !r.Existing {
		t.Fatalf("open record of an existing flow decoded as existing = %v (%v)", r.Existing, err)
	}
	h.Flags = 0
	if err := d.decode(rawRecord(&k), &r); err != nil || r.Existing {
		t.Fatalf("open record of a new flow decoded as existing = %v (%v)", r.Existing, err)
	}

	for _, n := range []int{0, headSize - 1, headSize + 1, recordSize - 1} {
		if err := d.decode(rawRecord(&k)[:n], &r); !errors.Is(err, errShortRecord) {
			t.Errorf("a %d-byte record: %v, want %v", n, err, errShortRecord)
		}
	}
	h.Family = 1
	if err := d.decode(rawRecord(&k), &r); err == nil {
		t.Fatal("unknown family accepted")
	}
}

// TestDecodeComm checks that process names come back right whether the
// decoder has them lately or not.
func TestDecodeComm(t *testing.T) {
	var k bpfFlowdRecord
	k.Head.Family, k.Head.Pid = afInet, 1
	var d decoder
	var r flow.Record
	names := []string{"curl", "nginx", "a", "0123456789abcde", "curl"}
	for i := range 40 {
		names = append(names, fmt.Sprintf("worker-%d", i%11))
	}
	for _, name := range names {
		putCString(&k.Head.Comm, name)
		if err := d.decode(rawRecord(&k), &r); err != nil {
			t.Fatal(err)
		}
		if r.Comm != name {
			t.Fatalf("comm %q decoded as %q", name, r.Comm)
		}
	}
}

func FuzzDecode(f *testing.F) {
	var k bpfFlowdRecord
	k.Head.Family = afInet
	f.Add(append([]byte(nil), rawRecord(&k)...))
	f.Add(append([]byte(nil), rawRecord(&k)[:headSize]...))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		// Copy into an 8-byte aligned buffer, as ring buffer samples are.
		buf := make([]uint64, (len(raw)+7)/8)
		b := unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(buf))), len(buf)*8)[:len(raw)]
		copy(b, raw)
		var r flow.Record
		if err := (&decoder{}).decode(b, &r); err != nil {
			return
		}
		for fl := flow.Field(0); fl < flow.NumFields; fl++ {
			if !r.Info.Has(fl) && r.Info.Values[fl] != 0 {
				t.Fatalf("absent field %s has value %d", fl, r.Info.Values[fl])
			}
		}
		if r.Family != 4 && r.Family != 6 {
			t.Fatalf("family %d", r.Family)
		}
		if len(raw) < recordSize && !r.Info.Present.IsEmpty() {
			t.Fatalf("a %d-byte record has tcp_info members", len(raw))
		}
		if r.PID == 0 && r.Comm != "" {
			t.Fatalf("comm %q without a pid", r.Comm)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	var k bpfFlowdRecord
	k.Head.Family = afInet6
	k.Present = [2]uint64{^uint64(0), 3}
	putCString(&k.Head.Ca, "cubic")
	raw := append([]byte(nil), rawRecord(&k)...)
	d := decoder{}
	var r flow.Record
	b.ReportAllocs()
	for b.Loop() {
		if err := d.decode(raw, &r); err != nil {
			b.Fatal(err)
		}
	}
}

func TestHZ(t *testing.T) {
	hz, err := hzFromConfig(strings.NewReader("# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"))
	if err != nil || hz != 250 {
		t.Fatalf("hzFromConfig = %d, %v", hz, err)
	}
	if _, err := hzFromConfig(strings.NewReader("CONFIG_X=1\n")); err == nil {
		t.Fatal("config without CONFIG_HZ accepted")
	}
	for rate, want := range map[float64]uint32{99: 100, 262: 250, 296: 300, 990: 1000} {
		if got, err := nearestHZ(rate); err != nil || got != want {
			t.Errorf("nearestHZ(%v) = %d, %v; want %d", rate, got, err, want)
		}
	}
	if _, err := nearestHZ(600); err == nil {
		t.Error("nearestHZ(600) accepted")
	}
}

func TestHZFromJiffiesSinceBoot(t *testing.T) {
	// jiffies as the kernel counts them: from 2^32 − 300·HZ, starting a
	// little after CLOCK_MONOTONIC does.
	reading := func(hz uint32, uptime, lateStart float64) timerList {
		return timerList{
			monotonicNS: uint64(uptime * 1e9),
			jiffies:     1<<32 - 300*uint64(hz) + uint64((uptime-lateStart)*float64(hz)),
		}
	}
	for _, hz := range configurableHZ {
		for _, uptime := range []float64{3, 60, 280, 320, 3600, 86400 * 400} {
			if got, ok := hzFromJiffiesSinceBoot(reading(hz, uptime, 0.4)); !ok || got != hz {
				t.Errorf("HZ=%d, uptime %vs: got %d, %t", hz, uptime, got, ok)
			}
		}
		// Five minutes after boot every HZ fits: the rate must decide.
		if got, ok := hzFromJiffiesSinceBoot(reading(hz, 300, 0.4)); ok {
			t.Errorf("HZ=%d, uptime 300s: %d accepted from one reading", hz, got)
		}
	}
	// A reading that fits no HZ (the clock and jiffies disagree).
	if got, ok := hzFromJiffiesSinceBoot(timerList{monotonicNS: 3600e9, jiffies: 1 << 40}); ok {
		t.Errorf("inconsistent reading gave HZ=%d", got)
	}
}

func TestParseTimerList(t *testing.T) {
	text := "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at 32171949457912 nsecs\n\ncpu: 0\n" +
		" clock 0:\n  .resolution: 1 nsecs\n  .offset:     0 nsecs\n" +
		"  .tick_stopped   : 0\n  .idle_jiffies   : 4302935249\n  .last_jiffies   : 4302935249\n" +
		"  .next_timer     : 32171952000000\njiffies: 4302935258\n\ncpu: 1\njiffies: 4302935259\n"
	got, err := parseTimerList([]byte(text))
	if want := (timerList{monotonicNS: 32171949457912, jiffies: 4302935258}); err != nil || got != want {
		t.Fatalf("parseTimerList = %+v, %v; want %+v", got, err, want)
	}
	if _, err := parseTimerList([]byte("now at 5 nsecs\n")); err == nil {
		t.Error("a listing without jiffies accepted")
	}
}

// TestHZFromTimerList reads this machine's /proc/timer_list and compares
// with its kernel config, where there is one.
func TestHZFromTimerList(t *testing.T) {
	if _, err := os.Stat("/proc/timer_list"); err != nil {
		t.Skipf("no /proc/timer_list here (%v): nothing to read HZ from", err)
	}
	got, err := hzFromTimerList()
	if errors.Is(err, fs.ErrPermission) {
		t.Skip("/proc/timer_list needs root: run the tests as root")
	}
	if err != nil {
		t.Fatal(err)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/proc/config.gz", "/boot/config-" + unix.ByteSliceToString(uts.Release[:])} {
		if want, err := hzFromConfigFile(path); err == nil {
			if got != want {
				t.Fatalf("HZ from /proc/timer_list = %d, %s says %d", got, path, want)
			}
			return
		}
	}
	t.Logf("HZ = %d from /proc/timer_list; no kernel config to compare with", got)
}

// TestJiffyConversions checks the factors against the constants the
// kernel's kernel/time/timeconst.bc generates for each HZ, and a few
// conversions against jiffies_to_usecs() and jiffies_to_msecs().
func TestJiffyConversions(t *testing.T) {
	for _, tc := range []struct {
		hz   uint32
		want jiffyRatios
	}{
		{100, jiffyRatios{10000, 1, 10, 1, 10000}},
		{250, jiffyRatios{4000, 1, 4, 1, 4000}},
		{300, jiffyRatios{10000, 3, 10, 3, 3333}},
		{1000, jiffyRatios{1000, 1, 1, 1, 1000}},
		{1024, jiffyRatios{15625, 16, 125, 128, 976}},
	} {
		if got := jiffyConversions(tc.hz); got != tc.want {
			t.Errorf("HZ=%d: %+v, want %+v", tc.hz, got, tc.want)
		}
	}
	// What the program computes, for HZ=300: µs round down, ms round up.
	jc := jiffyConversions(300)
	usecs := func(j uint64) uint64 { return j * uint64(jc.usecNum) / uint64(jc.usecDen) }
	msecs := func(j uint64) uint64 {
		return (j*uint64(jc.msecNum) + uint64(jc.msecDen) - 1) / uint64(jc.msecDen)
	}
	for j, want := range map[uint64][2]uint64{1: {3333, 4}, 3: {10000, 10}, 61: {203333, 204}} {
		if u, m := usecs(j), msecs(j); u != want[0] || m != want[1] {
			t.Errorf("HZ=300, %d jiffies: %d µs, %d ms; want %d µs, %d ms", j, u, m, want[0], want[1])
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		fail bool
	}{
		{Config{Cgroup: "/x"}, false},
		{Config{}, true},
		{Config{Cgroup: "/x", Mode: "fast"}, true},
		{Config{Cgroup: "/x", Interval: -1}, true},
		{Config{Cgroup: "/x", IdleInterval: -1}, true},
		{Config{Cgroup: "/x", MaxFlows: -1}, true},
		{Config{Cgroup: "/x", MaxFlows: 1<<24 + 1}, true},
		{Config{Cgroup: "/x", RingbufSize: 3 * 4096}, true},
		{Config{Cgroup: "/x", RingbufSize: 100}, true},
	} {
		err := tc.cfg.withDefaults()
		if (err != nil) != tc.fail {
			t.Errorf("%+v: err = %v, want failure %v", tc.cfg, err, tc.fail)
		}
	}
	c := Config{Cgroup: "/x"}
	_ = c.withDefaults()
	if c.Mode != ModePoll || c.RingbufSize != DefaultRingbufSize || c.FlushInterval != DefaultFlushInterval ||
		c.MaxFlows != DefaultMaxFlows || c.IdleInterval != 0 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestProbe(t *testing.T) {
	testutil.RequireRoot(t)
	if err := Probe(); err != nil {
		t.Fatalf("Probe on a kernel that runs the backend: %v", err)
	}
}
