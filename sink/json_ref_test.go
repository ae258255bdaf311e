package sink

import (
	"bytes"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/flowd/flowd/flow"
)

// refAppendJSON is AppendJSON written plainly, with strconv, time.Format
// and netip.Addr.String: the reference the fast encoder must match byte
// for byte.
func refAppendJSON(dst []byte, r *flow.Record) []byte {
	dst = append(dst, `{"time":"`...)
	dst = r.Time.UTC().AppendFormat(dst, "2006-01-02T15:04:05.000000000Z07:00")
	dst = append(dst, `","backend":`...)
	dst = refString(dst, r.Backend)
	dst = append(dst, `,"event":"`+r.Event.String()+`","cookie":`...)
	dst = strconv.AppendUint(dst, r.Cookie, 10)
	if r.Existing && r.Event == flow.EventOpen {
		dst = append(dst, `,"existing":true`...)
	}
	dst = append(dst, `,"cgroup_id":`...)
	dst = strconv.AppendUint(dst, r.CgroupID, 10)
	if r.Cgroup != "" {
		dst = append(dst, `,"cgroup":`...)
		dst = refString(dst, r.Cgroup)
	}
	dst = append(dst, `,"family":`...)
	dst = strconv.AppendUint(dst, uint64(r.Family), 10)
	dst = append(dst, `,"laddr":`...)
	dst = refAddr(dst, r.LocalAddr)
	dst = append(dst, `,"lport":`...)
	dst = strconv.AppendUint(dst, uint64(r.LocalPort), 10)
	dst = append(dst, `,"raddr":`...)
	dst = refAddr(dst, r.RemoteAddr)
	dst = append(dst, `,"rport":`...)
	dst = strconv.AppendUint(dst, uint64(r.RemotePort), 10)
	dst = append(dst, `,"state":"`+r.State.String()+`"`...)
	if r.Event == flow.EventState || (r.Event == flow.EventClose && r.OldState != 0) {
		dst = append(dst, `,"old_state":"`+r.OldState.String()+`"`...)
	}
	if r.CA != "" {
		dst = append(dst, `,"ca":`...)
		dst = refString(dst, r.CA)
	}
	if r.PID != 0 {
		dst = append(dst, `,"pid":`...)
		dst = strconv.AppendUint(dst, uint64(r.PID), 10)
	}
	if r.Comm != "" {
		dst = append(dst, `,"comm":`...)
		dst = refString(dst, r.Comm)
	}
	if r.Info.Present.IsEmpty() {
		return append(dst, '}')
	}
	dst = append(dst, `,"tcp_info":{`...)
	first := true
	for f := range flow.NumFields {
		if !r.Info.Has(f) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, `"`+f.Name()+`":`...)
		dst = strconv.AppendUint(dst, r.Info.Values[f], 10)
	}
	return append(dst, "}}"...)
}

func refAddr(dst []byte, a netip.Addr) []byte {
	if !a.IsValid() {
		return append(dst, `""`...)
	}
	return refString(dst, a.String())
}

// refString escapes as encoding/json did before Go 1.22 (\u0008 and \u000c,
// not \b and \f), without HTML escaping.
func refString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case r == '"' || r == '\\':
			dst = append(dst, '\\', byte(r))
		case r == '\n':
			dst = append(dst, `\n`...)
		case r == '\r':
			dst = append(dst, `\r`...)
		case r == '\t':
			dst = append(dst, `\t`...)
		case r < 0x20 || r == '\u2028' || r == '\u2029':
			dst = append(dst, `\u`...)
			q := strconv.FormatInt(int64(r), 16)
			dst = append(dst, "0000"[len(q):]...)
			dst = append(dst, q...)
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
	return append(dst, '"')
}

// randomRecord returns a record whose every part varies: times over the
// whole 0000..9999 range (and some outside it), both families, any subset
// of tcp_info members with values of every length.
func randomRecord(rng *rand.Rand) *flow.Record {
	r := &flow.Record{
		Backend:    []string{"ebpf", "netlink", "", "we\"ird\x01"}[rng.IntN(4)],
		Event:      flow.Event(rng.IntN(6)),
		Cookie:     randomUint(rng),
		CgroupID:   randomUint(rng),
		Family:     uint8(rng.IntN(256)),
		LocalPort:  uint16(rng.Uint32()),
		RemotePort: uint16(rng.Uint32()),
		State:      flow.State(rng.IntN(16)),
		OldState:   flow.State(rng.IntN(16)),
		Existing:   rng.IntN(2) == 0,
	}
	switch rng.IntN(10) {
	case 0:
		r.Time = time.Unix(rng.Int64N(1<<40)-1<<39, rng.Int64N(1e9)) // beyond 0000..9999 too
	case 1:
		r.Time = time.Time{}
	default:
		lo := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
		hi := time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
		r.Time = time.Unix(lo+rng.Int64N(hi-lo+1), rng.Int64N(1e9))
		if rng.IntN(2) == 0 {
			r.Time = r.Time.In(time.FixedZone("X", rng.IntN(50000)-25000))
		}
	}
	r.LocalAddr = randomAddr(rng)
	r.RemoteAddr = randomAddr(rng)
	if rng.IntN(4) != 0 {
		r.Cgroup = []string{"/", "system.slice/nginx.service", "user.slice/user-0.slice/a \"b\"\\c", "x\ny\xff\u2028"}[rng.IntN(4)]
	}
	if rng.IntN(4) != 0 {
		r.CA = []string{"cubic", "bbr", "reno", "a\"\\\b\f\u2028\xff✓", "x\x00y"}[rng.IntN(5)]
	}
	if rng.IntN(3) == 0 {
		r.PID = uint32(randomUint(rng))
		r.Comm = []string{"curl", "", "nginx: worker", "a\"\\\x1f\u2028\xff✓"}[rng.IntN(4)]
	}
	all, none := rng.IntN(3) == 0, rng.IntN(6) == 0
	for f := range flow.NumFields {
		if !none && (all || rng.IntN(2) == 0) {
			r.Info.Set(f, randomUint(rng))
		}
	}
	if !none && rng.IntN(4) == 0 {
		last := ^uint64(0)
		r.Info.Present[flow.MaskWords-1] |= last << (flow.NumFields % 64) // bits past the last field
	}
	return r
}

// randomUint has a uniformly random number of decimal digits.
func randomUint(rng *rand.Rand) uint64 {
	switch d := rng.IntN(22); d {
	case 0:
		return 0
	case 20:
		return math.MaxUint64 - rng.Uint64N(1000)
	case 21:
		return rng.Uint64()
	default:
		lo := uint64(1)
		for range d - 1 {
			lo *= 10
		}
		return lo + rng.Uint64N(lo*9)
	}
}

func randomAddr(rng *rand.Rand) netip.Addr {
	var b [16]byte
	for i := range b {
		if rng.IntN(3) != 0 {
			b[i] = byte(rng.Uint32())
		}
	}
	switch rng.IntN(6) {
	case 0:
		return netip.Addr{}
	case 1:
		return netip.AddrFrom16(b)
	case 2:
		return netip.AddrFrom16(b).WithZone("eth0")
	case 3:
		return netip.AddrFrom4([4]byte{0, b[1], 255, b[3]})
	default:
		return netip.AddrFrom4([4]byte(b[:4]))
	}
}

// TestAppendJSONMatchesReference compares AppendJSON and an Encoder with
// refAppendJSON on random records. Half of them share the second of the
// record before, as a flow's records mostly do.
func TestAppendJSONMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var (
		enc  Encoder
		prev time.Time
	)
	buf := make([]byte, 0, 64) // too small: AppendJSON must grow it
	for i := range 5000 {
		r := randomRecord(rng)
		if i%2 == 1 {
			r.Time = time.Unix(prev.Unix(), rng.Int64N(1e9)).In(r.Time.Location())
		}
		prev = r.Time
		want := refAppendJSON([]byte("prefix"), r)
		buf = AppendJSON(append(buf[:0], "prefix"...), r)
		if !bytes.Equal(buf, want) {
			t.Fatalf("record %d: %+v\nAppendJSON: %s\nreference:  %s", i, r, buf, want)
		}
		buf = enc.AppendJSON(append(buf[:0], "prefix"...), r)
		if !bytes.Equal(buf, want) {
			t.Fatalf("record %d: %+v\nEncoder:   %s\nreference: %s", i, r, buf, want)
		}
	}
}

// FuzzAppendJSON compares the encoder with refAppendJSON on records
// drawn from the fuzzer's seeds.
func FuzzAppendJSON(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Add(uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		r := randomRecord(rand.New(rand.NewPCG(a, b)))
		if got, want := AppendJSON(nil, r), refAppendJSON(nil, r); !bytes.Equal(got, want) {
			t.Fatalf("%+v\nAppendJSON: %s\nreference:  %s", r, got, want)
		}
	})
}
