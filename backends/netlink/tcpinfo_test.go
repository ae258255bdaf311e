package netlink

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/flow"
)

// sizeofTCPInfo is the length of struct tcp_info up to the last member
// flowd reports (tcpi_received_ce_bytes).
const sizeofTCPInfo = 276

// bitfield is one tcp_info bit-field member, which unix.TCPInfo leaves out.
var bitfields = map[flow.Field]struct{ off, shift, bits int }{
	flow.FieldSndWscale:              {6, 0, 4},
	flow.FieldRcvWscale:              {6, 4, 4},
	flow.FieldDeliveryRateAppLimited: {7, 0, 1},
	flow.FieldFastopenClientFail:     {7, 1, 2},
}

// unixMember is where golang.org/x/sys/unix (generated from the kernel's
// uapi headers, independently of tcpInfoLayout) puts a tcp_info member.
type unixMember struct {
	index int // in unix.TCPInfo
	off   int
	size  int
}

// unixLayout maps every flowd field that unix.TCPInfo has to its member
// there, matching tcp_info member names ("Snd_cwnd" is "snd_cwnd").
func unixLayout(t testing.TB) map[flow.Field]unixMember {
	t.Helper()
	typ := reflect.TypeFor[unix.TCPInfo]()
	out := make(map[flow.Field]unixMember)
	for i := range typ.NumField() {
		sf := typ.Field(i)
		f, ok := flow.FieldByName(strings.ToLower(sf.Name))
		if !ok {
			continue // fackets, last_ack_sent, padding
		}
		out[f] = unixMember{index: i, off: int(sf.Offset), size: int(sf.Type.Size())}
	}
	for f := range flow.NumFields {
		_, inUnix := out[f]
		_, isBits := bitfields[f]
		if inUnix == isBits {
			t.Fatalf("field %s: in unix.TCPInfo %v, bit-field %v: expected exactly one", f, inUnix, isBits)
		}
	}
	return out
}

// wantEnd returns the attribute length from which f is present, from the
// unix.TCPInfo layout (or the bit-field table).
func wantEnd(um map[flow.Field]unixMember, f flow.Field) int {
	if bf, ok := bitfields[f]; ok {
		return bf.off + 1
	}
	return um[f].off + um[f].size
}

func TestTCPInfoLayoutTable(t *testing.T) {
	seen := make(map[flow.Field]bool)
	prevEnd := 0
	for i, m := range tcpInfoLayout {
		if seen[m.field] {
			t.Errorf("%s listed twice", m.field)
		}
		seen[m.field] = true
		switch m.size {
		case 1, 2, 4, 8:
		default:
			t.Errorf("%s: size %d", m.field, m.size)
		}
		if m.off%uint16(m.size) != 0 {
			t.Errorf("%s: offset %d not aligned to its size %d", m.field, m.off, m.size)
		}
		if m.bits != 0 && (m.size != 1 || int(m.shift)+int(m.bits) > 8) {
			t.Errorf("%s: bit-field %d+%d does not fit its byte", m.field, m.shift, m.bits)
		}
		if m.end() < prevEnd {
			t.Errorf("entry %d (%s) ends at %d, before the previous one (%d): the table must be sorted by end", i, m.field, m.end(), prevEnd)
		}
		prevEnd = m.end()
	}
	for f := range flow.NumFields {
		if !seen[f] {
			t.Errorf("field %s missing from tcpInfoLayout", f)
		}
	}
	if prevEnd != sizeofTCPInfo {
		t.Errorf("last member ends at %d, want %d", prevEnd, sizeofTCPInfo)
	}
}

// fullTCPInfo returns a struct tcp_info (as the kernel lays it out, per
// unix.TCPInfo) whose every reported member holds a distinct value, and
// those values.
func fullTCPInfo(t testing.TB) ([]byte, map[flow.Field]uint64) {
	t.Helper()
	um := unixLayout(t)
	var ti unix.TCPInfo
	v := reflect.ValueOf(&ti).Elem()
	want := make(map[flow.Field]uint64)
	for f, m := range um {
		// Distinct per field, with a byte in each position the member has,
		// so a wrong offset or size reads a different value.
		x := uint64(f) + 1 | (uint64(f)+0x40)<<8 | (uint64(f)+0x80)<<16 | 0x5a<<24 | (uint64(f)+0x11)<<32 | 0xa5<<56
		x &= 1<<(8*m.size) - 1
		v.Field(m.index).SetUint(x)
		want[f] = x
	}
	b := make([]byte, unsafe.Sizeof(ti))
	copy(b, unsafe.Slice((*byte)(unsafe.Pointer(&ti)), unsafe.Sizeof(ti)))
	// Bytes 6 and 7: snd_wscale 0x9, rcv_wscale 0x6, app_limited 1,
	// fastopen_client_fail 2, and set bits that belong to no member.
	b[6] = 0x69
	b[7] = 0x80 | 2<<1 | 1
	want[flow.FieldSndWscale] = 9
	want[flow.FieldRcvWscale] = 6
	want[flow.FieldDeliveryRateAppLimited] = 1
	want[flow.FieldFastopenClientFail] = 2
	return b, want
}

func TestDecodeTCPInfoFull(t *testing.T) {
	b, want := fullTCPInfo(t)
	var info flow.TCPInfo
	decodeTCPInfo(&info, b)
	for f := range flow.NumFields {
		got, ok := info.Get(f)
		if !ok {
			t.Errorf("%s absent", f)
			continue
		}
		if got != want[f] {
			t.Errorf("%s = %#x, want %#x", f, got, want[f])
		}
	}
}

// TestDecodeTCPInfoOffsets spells out a few members by hand, from
// include/uapi/linux/tcp.h, to check the decoder against a second source.
func TestDecodeTCPInfoOffsets(t *testing.T) {
	ne := binary.NativeEndian
	b := make([]byte, sizeofTCPInfo)
	b[0] = 1                                     // TCP_ESTABLISHED
	ne.PutUint32(b[68:], 1234)                   // tcpi_rtt
	ne.PutUint32(b[80:], 10)                     // tcpi_snd_cwnd
	ne.PutUint32(b[100:], 3)                     // tcpi_total_retrans
	ne.PutUint64(b[120:], 0x0102030405060708)    // tcpi_bytes_acked
	ne.PutUint64(b[128:], 4<<20)                 // tcpi_bytes_received
	ne.PutUint32(b[192:], 2900)                  // tcpi_delivered
	ne.PutUint16(b[240:], 7)                     // tcpi_total_rto
	ne.PutUint16(b[242:], 5)                     // tcpi_total_rto_recoveries
	ne.PutUint32(b[272:], 0xfffffffe)            // tcpi_received_ce_bytes
	ne.PutUint64(b[200:], 0xffff_ffff_ffff_fff0) // tcpi_bytes_sent
	var info flow.TCPInfo
	decodeTCPInfo(&info, b)
	for _, c := range []struct {
		f    flow.Field
		want uint64
	}{
		{flow.FieldState, 1},
		{flow.FieldRTT, 1234},
		{flow.FieldSndCwnd, 10},
		{flow.FieldTotalRetrans, 3},
		{flow.FieldBytesAcked, 0x0102030405060708},
		{flow.FieldBytesReceived, 4 << 20},
		{flow.FieldDelivered, 2900},
		{flow.FieldTotalRTO, 7},
		{flow.FieldTotalRTORecoveries, 5},
		{flow.FieldReceivedCEBytes, 0xfffffffe},
		{flow.FieldBytesSent, 0xffff_ffff_ffff_fff0},
		{flow.FieldRTTVar, 0},
	} {
		if got, ok := info.Get(c.f); !ok || got != c.want {
			t.Errorf("%s = %d (present %v), want %d", c.f, got, ok, c.want)
		}
	}
}

func TestDecodeTCPInfoTruncated(t *testing.T) {
	full, want := fullTCPInfo(t)
	um := unixLayout(t)
	for _, tc := range []struct {
		name string
		n    int
		// spot checks on top of the generic rule
		present, absent []flow.Field
	}{
		{"empty", 0, nil, []flow.Field{flow.FieldState}},
		{"state only", 1, []flow.Field{flow.FieldState}, []flow.Field{flow.FieldCAState}},
		{"before bit-fields", 6, []flow.Field{flow.FieldOptions}, []flow.Field{flow.FieldSndWscale}},
		{"wscale byte", 7, []flow.Field{flow.FieldSndWscale, flow.FieldRcvWscale}, []flow.Field{flow.FieldDeliveryRateAppLimited}},
		{"half of rto", 10, []flow.Field{flow.FieldFastopenClientFail}, []flow.Field{flow.FieldRTO}},
		{"linux 2.6 (104)", 104, []flow.Field{flow.FieldTotalRetrans}, []flow.Field{flow.FieldPacingRate}},
		{"half of pacing_rate", 108, []flow.Field{flow.FieldTotalRetrans}, []flow.Field{flow.FieldPacingRate}},
		{"linux 4.9 (160)", 160, []flow.Field{flow.FieldDataSegsOut}, []flow.Field{flow.FieldDeliveryRate}},
		{"linux 5.4 (232)", 232, []flow.Field{flow.FieldSndWnd}, []flow.Field{flow.FieldRcvWnd, flow.FieldRehash}},
		{"linux 6.2 (240)", 240, []flow.Field{flow.FieldRehash}, []flow.Field{flow.FieldTotalRTO}},
		{"linux 6.7 (248)", 248, []flow.Field{flow.FieldTotalRTOTime}, []flow.Field{flow.FieldReceivedCE}},
		{"one short of the end", sizeofTCPInfo - 1, []flow.Field{flow.FieldReceivedE0Bytes}, []flow.Field{flow.FieldReceivedCEBytes}},
		{"all", sizeofTCPInfo, []flow.Field{flow.FieldReceivedCEBytes}, nil},
		{"longer than known", len(full), []flow.Field{flow.FieldReceivedCEBytes}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var info flow.TCPInfo
			// Start from a full decode: decoding must clear what it does not set.
			decodeTCPInfo(&info, full)
			decodeTCPInfo(&info, full[:tc.n])
			for f := range flow.NumFields {
				got, ok := info.Get(f)
				if wantOK := wantEnd(um, f) <= tc.n; ok != wantOK {
					t.Errorf("%s present = %v, want %v", f, ok, wantOK)
				}
				if ok && got != want[f] {
					t.Errorf("%s = %#x, want %#x", f, got, want[f])
				}
				if !ok && info.Values[f] != 0 {
					t.Errorf("absent %s keeps value %d", f, info.Values[f])
				}
			}
			for _, f := range tc.present {
				if !info.Has(f) {
					t.Errorf("%s absent, want present", f)
				}
			}
			for _, f := range tc.absent {
				if info.Has(f) {
					t.Errorf("%s present, want absent", f)
				}
			}
		})
	}
}

func TestDecodeTCPInfoBitfields(t *testing.T) {
	for _, tc := range []struct {
		b6, b7                        byte
		snd, rcv, appLimited, tfoFail uint64
	}{
		{0x00, 0x00, 0, 0, 0, 0},
		{0x07, 0x00, 7, 0, 0, 0},
		{0x70, 0x00, 0, 7, 0, 0},
		{0xe9, 0x00, 9, 14, 0, 0},
		{0xff, 0x01, 15, 15, 1, 0},
		{0x00, 0x02, 0, 0, 0, 1},
		{0x00, 0x04, 0, 0, 0, 2},
		{0x00, 0x07, 0, 0, 1, 3},
		{0x00, 0xf8, 0, 0, 0, 0}, // bits 3-7 belong to no member
		{0x00, 0xfe, 0, 0, 0, 3},
	} {
		b := make([]byte, 8)
		b[6], b[7] = tc.b6, tc.b7
		var info flow.TCPInfo
		decodeTCPInfo(&info, b)
		for _, c := range []struct {
			f    flow.Field
			want uint64
		}{
			{flow.FieldSndWscale, tc.snd},
			{flow.FieldRcvWscale, tc.rcv},
			{flow.FieldDeliveryRateAppLimited, tc.appLimited},
			{flow.FieldFastopenClientFail, tc.tfoFail},
		} {
			if got, ok := info.Get(c.f); !ok || got != c.want {
				t.Errorf("bytes %#02x %#02x: %s = %d (present %v), want %d", tc.b6, tc.b7, c.f, got, ok, c.want)
			}
		}
	}
}

func FuzzDecodeTCPInfo(f *testing.F) {
	full, _ := fullTCPInfo(f)
	for _, n := range []int{0, 1, 7, 8, 104, 160, 232, 240, 248, sizeofTCPInfo, len(full)} {
		f.Add(full[:n])
	}
	um := unixLayout(f)
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		f.Skip("the expected values are computed for a little-endian host")
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var info flow.TCPInfo
		decodeTCPInfo(&info, full)
		decodeTCPInfo(&info, b)
		for fld := range flow.NumFields {
			end := wantEnd(um, fld)
			got, ok := info.Get(fld)
			if ok != (end <= len(b)) {
				t.Fatalf("len %d: %s present = %v, it ends at %d", len(b), fld, ok, end)
			}
			if !ok {
				continue
			}
			if bf, isBits := bitfields[fld]; isBits {
				if want := uint64(b[bf.off]>>bf.shift) & (1<<bf.bits - 1); got != want {
					t.Fatalf("%s = %d, want %d", fld, got, want)
				}
				continue
			}
			m := um[fld]
			var want uint64
			for i := m.size - 1; i >= 0; i-- { // little-endian
				want = want<<8 | uint64(b[m.off+i])
			}
			if got != want {
				t.Fatalf("%s = %#x, want %#x", fld, got, want)
			}
		}
	})
}

func BenchmarkDecodeTCPInfo(b *testing.B) {
	buf, _ := fullTCPInfo(b)
	buf = buf[:sizeofTCPInfo]
	var info flow.TCPInfo
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		decodeTCPInfo(&info, buf)
	}
}
