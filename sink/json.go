package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/flowd/flowd/backends"
)

// AppendJSON appends r to dst as one JSON object (without a newline) and
// returns the extended buffer. Keys come in a fixed order:
//
//	{"time":"2026-11-22T00:41:02.123456789Z","backend":"ebpf","event":"sample",
//	 "cookie":123,"cgroup_id":456,"family":4,"laddr":"127.0.0.1","lport":5201,
//	 "raddr":"127.0.0.1","rport":40000,"state":"ESTABLISHED","old_state":"SYN_SENT",
//	 "ca":"cubic","tcp_info":{"state":1,"ca_state":0,...}}
//
// time is RFC 3339 in UTC with exactly nine fractional digits; old_state is
// there only on state events and ca only when it is known; tcp_info holds
// the present members only, in Field order. It does not allocate when dst
// has room.
func AppendJSON(dst []byte, r *backends.Record) []byte {
	dst = append(dst, `{"time":"`...)
	dst = appendTime(dst, r.Time)
	dst = append(dst, `","backend":`...)
	dst = appendString(dst, r.Backend)
	dst = append(dst, `,"event":"`...)
	dst = append(dst, r.Event.String()...)
	dst = append(dst, `","cookie":`...)
	dst = appendUint(dst, r.Cookie)
	dst = append(dst, `,"cgroup_id":`...)
	dst = appendUint(dst, r.CgroupID)
	dst = append(dst, `,"family":`...)
	dst = appendUint(dst, uint64(r.Family))
	dst = append(dst, `,"laddr":`...)
	dst = appendAddr(dst, r.LocalAddr)
	dst = append(dst, `,"lport":`...)
	dst = appendUint(dst, uint64(r.LocalPort))
	dst = append(dst, `,"raddr":`...)
	dst = appendAddr(dst, r.RemoteAddr)
	dst = append(dst, `,"rport":`...)
	dst = appendUint(dst, uint64(r.RemotePort))
	dst = append(dst, `,"state":"`...)
	dst = append(dst, r.State.String()...)
	dst = append(dst, '"')
	if r.Event == backends.EventState {
		dst = append(dst, `,"old_state":"`...)
		dst = append(dst, r.OldState.String()...)
		dst = append(dst, '"')
	}
	if r.CA != "" {
		dst = append(dst, `,"ca":`...)
		dst = appendString(dst, r.CA)
	}
	dst = append(dst, `,"tcp_info":{`...)
	sep := 1 // skip the comma before the first member
	for w, present := range r.Info.Present {
		for present != 0 {
			f := backends.Field(w*64 + bits.TrailingZeros64(present))
			present &= present - 1
			if f >= backends.NumFields {
				break
			}
			dst = append(dst, memberKeys[f][sep:]...)
			sep = 0
			dst = appendUint(dst, r.Info.Values[f])
		}
	}
	return append(dst, "}}"...)
}

// memberKeys holds `,"name":` for every field, so that a member's key is
// one append. It is computed once and only read.
var memberKeys = func() (keys [backends.NumFields]string) {
	for f := range backends.NumFields {
		keys[f] = `,"` + f.Name() + `":`
	}
	return keys
}()

const digitPairs = "00010203040506070809" +
	"10111213141516171819" +
	"20212223242526272829" +
	"30313233343536373839" +
	"40414243444546474849" +
	"50515253545556575859" +
	"60616263646566676869" +
	"70717273747576777879" +
	"80818283848586878889" +
	"90919293949596979899"

// appendUint appends v in decimal. It writes the digits in place, which
// saves strconv.AppendUint's copy through a scratch buffer.
func appendUint(dst []byte, v uint64) []byte {
	if v < 100 {
		if v < 10 {
			return append(dst, byte('0'+v))
		}
		return append(dst, digitPairs[v*2], digitPairs[v*2+1])
	}
	n := decimalLen(v)
	dst = slices.Grow(dst, n)
	i := len(dst) + n
	dst = dst[:i]
	for v >= 100 {
		q := v / 100
		r := (v - q*100) * 2
		i -= 2
		dst[i], dst[i+1] = digitPairs[r], digitPairs[r+1]
		v = q
	}
	if v >= 10 {
		dst[i-2], dst[i-1] = digitPairs[v*2], digitPairs[v*2+1]
	} else {
		dst[i-1] = byte('0' + v)
	}
	return dst
}

// powersOf10 holds 10^0 .. 10^19; only read.
var powersOf10 = [...]uint64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9,
	1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19}

// decimalLen returns the number of decimal digits of v (v > 0).
func decimalLen(v uint64) int {
	// log10(2) ~ 1233/4096 gives the length or one less.
	n := bits.Len64(v) * 1233 >> 12
	if n < len(powersOf10) && v >= powersOf10[n] {
		n++
	}
	return n
}

// timeLayout is RFC 3339 with exactly nine fractional digits.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// appendTime appends t in UTC as timeLayout does, without time.Format's
// layout parsing.
func appendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, timeLayout)
	}
	hour, minute, sec := t.Clock()
	ns := t.Nanosecond()
	dst = appendPair(dst, year/100)
	dst = appendPair(dst, year%100)
	dst = append(dst, '-')
	dst = appendPair(dst, int(month))
	dst = append(dst, '-')
	dst = appendPair(dst, day)
	dst = append(dst, 'T')
	dst = appendPair(dst, hour)
	dst = append(dst, ':')
	dst = appendPair(dst, minute)
	dst = append(dst, ':')
	dst = appendPair(dst, sec)
	dst = append(dst, '.')
	dst = appendPair(dst, ns/10000000)
	dst = appendPair(dst, ns/100000%100)
	dst = appendPair(dst, ns/1000%100)
	dst = appendPair(dst, ns/10%100)
	return append(dst, byte('0'+ns%10), 'Z')
}

// appendPair appends v (0..99) as two digits.
func appendPair(dst []byte, v int) []byte {
	return append(dst, digitPairs[v*2], digitPairs[v*2+1])
}

// appendAddr appends a quoted address; the zero Addr becomes "".
func appendAddr(dst []byte, a netip.Addr) []byte {
	if a.Zone() != "" {
		// A zone is free text; records from the kernel never have one.
		return appendString(dst, a.String())
	}
	dst = append(dst, '"')
	dst = a.AppendTo(dst)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Quotes, backslashes and control
// characters are escaped, invalid UTF-8 becomes U+FFFD and U+2028/U+2029
// are escaped, as encoding/json does.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// wireRecord is a record as ParseJSON reads it.
type wireRecord struct {
	Time     *string                    `json:"time"`
	Backend  *string                    `json:"backend"`
	Event    *string                    `json:"event"`
	Cookie   uint64                     `json:"cookie"`
	CgroupID uint64                     `json:"cgroup_id"`
	Family   uint8                      `json:"family"`
	LAddr    string                     `json:"laddr"`
	LPort    uint16                     `json:"lport"`
	RAddr    string                     `json:"raddr"`
	RPort    uint16                     `json:"rport"`
	State    string                     `json:"state"`
	OldState *string                    `json:"old_state"`
	CA       string                     `json:"ca"`
	TCPInfo  map[string]json.RawMessage `json:"tcp_info"`
}

// ParseJSON reads one record written by AppendJSON into r (overwriting
// it). Unknown keys, in tcp_info too, are errors. It is meant for tools and
// tests, not for speed.
func ParseJSON(line []byte, r *backends.Record) error {
	var w wireRecord
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("decoding record: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("decoding record: data after the object")
	}
	*r = backends.Record{}

	if w.Time == nil || w.Backend == nil || w.Event == nil {
		return errors.New("decoding record: time, backend and event are required")
	}
	t, err := time.Parse(time.RFC3339Nano, *w.Time)
	if err != nil {
		return fmt.Errorf("decoding time: %w", err)
	}
	r.Time = t.UTC()
	if y := r.Time.Year(); y < 0 || y > 9999 {
		return fmt.Errorf("decoding time: %q is outside years 0000..9999 in UTC", *w.Time)
	}
	r.Backend = *w.Backend
	if r.Event, err = parseEvent(*w.Event); err != nil {
		return err
	}
	r.Cookie = w.Cookie
	r.CgroupID = w.CgroupID
	r.Family = w.Family
	if r.LocalAddr, err = parseAddr("laddr", w.LAddr); err != nil {
		return err
	}
	if r.RemoteAddr, err = parseAddr("raddr", w.RAddr); err != nil {
		return err
	}
	r.LocalPort = w.LPort
	r.RemotePort = w.RPort
	if r.State, err = parseState("state", w.State); err != nil {
		return err
	}
	if w.OldState != nil {
		if r.Event != backends.EventState {
			return fmt.Errorf("decoding record: old_state on a %s event", r.Event)
		}
		if r.OldState, err = parseState("old_state", *w.OldState); err != nil {
			return err
		}
	}
	r.CA = w.CA
	for name, raw := range w.TCPInfo {
		f, ok := backends.FieldByName(name)
		if !ok {
			return fmt.Errorf("decoding tcp_info: unknown member %q", name)
		}
		v, err := strconv.ParseUint(string(raw), 10, 64)
		if err != nil {
			return fmt.Errorf("decoding tcp_info: %s: %s is not an unsigned 64-bit integer", name, raw)
		}
		r.Info.Set(f, v)
	}
	return nil
}

func parseEvent(s string) (backends.Event, error) {
	if e, ok := backends.ParseEvent(s); ok {
		return e, nil
	}
	if s == backends.Event(0).String() {
		return 0, nil
	}
	return 0, fmt.Errorf("decoding event: unknown event %q", s)
}

func parseState(key, s string) (backends.State, error) {
	if st, ok := backends.ParseState(s); ok {
		return st, nil
	}
	if s == backends.State(0).String() || s == "" {
		return 0, nil
	}
	return 0, fmt.Errorf("decoding %s: unknown TCP state %q", key, s)
}

func parseAddr(key, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("decoding %s: %w", key, err)
	}
	return a, nil
}
