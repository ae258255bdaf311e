package sink

import (
	"bytes"
	"encoding/binary"
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

	"github.com/flowd/flowd/flow"
)

// AppendJSON appends r to dst as one JSON object (without a newline) and
// returns the extended buffer. Keys come in a fixed order:
//
//	{"time":"2026-11-22T00:41:02.123456789Z","backend":"ebpf","event":"sample",
//	 "cookie":123,"cgroup_id":456,"cgroup":"system.slice/nginx.service","family":4,
//	 "laddr":"127.0.0.1","lport":5201,"raddr":"127.0.0.1","rport":40000,
//	 "state":"ESTABLISHED","old_state":"SYN_SENT","ca":"cubic","pid":789,"comm":"curl",
//	 "tcp_info":{"state":1,"ca_state":0,...}}
//
// time is RFC 3339 in UTC with exactly nine fractional digits; "existing":true
// follows the cookie on open records of flows found running (Existing);
// old_state is there only on state events and on close records that have
// one (OldState, from the ebpf backend), cgroup, ca, pid and comm only when
// they are known; tcp_info holds the present members only, in Field order,
// and is left out of a record that has none (a state record of the ebpf
// backend in poll mode). It does not allocate when dst has room (about
// 4 KiB beyond its length is always enough).
//
// An Encoder writes the same bytes faster when it encodes many records.
func AppendJSON(dst []byte, r *flow.Record) []byte {
	var e Encoder
	return e.AppendJSON(dst, r)
}

// An Encoder encodes records as AppendJSON does. It remembers the date and
// time, to the second, of the last record it encoded, which the records
// that follow mostly share. The zero Encoder is ready to use; an Encoder
// must not be used by several goroutines at once.
//
// Encoding is the hot path of the JSON Lines output, so the parts that
// repeat (tcp_info members, integers, IPv4 addresses) are written with
// fixed-size stores into room reserved once, not with append.
type Encoder struct {
	prefix [timePrefixLen]byte // "2006-01-02T15:04:05." of the Unix second sec
	sec    int64
	valid  bool // prefix and sec are set
	// omit holds the tcp_info members left out even when present
	// (SetMembers); empty writes every present member.
	omit flow.Mask
}

// SetMembers makes the Encoder write only the listed tcp_info members (those
// of them a record has), still in Field order; with none listed it writes
// every present member, as the zero Encoder does.
func (e *Encoder) SetMembers(members ...flow.Field) {
	e.omit = flow.Mask{}
	if len(members) > 0 {
		e.omit = flow.AllFields().AndNot(flow.MaskOf(members...))
	}
}

// AppendJSON appends r to dst as the package's AppendJSON does.
func (e *Encoder) AppendJSON(dst []byte, r *flow.Record) []byte {
	return e.appendRecord(dst, r, &e.omit)
}

// appendPartial appends r as a partial sample: time, backend, event,
// cookie, "partial":true, and the tcp_info members omit does not name.
func (e *Encoder) appendPartial(dst []byte, r *flow.Record, omit *flow.Mask) []byte {
	dst = e.appendHead(dst, r)
	dst = append(dst, `,"partial":true,"tcp_info":{`...)
	dst = appendMembers(dst, &r.Info, omit)
	return append(dst, "}}"...)
}

// appendHead appends the keys every line starts with: time, backend,
// event and cookie.
func (e *Encoder) appendHead(dst []byte, r *flow.Record) []byte {
	dst = append(dst, `{"time":"`...)
	dst = e.appendTime(dst, r.Time)
	dst = append(dst, `","backend":`...)
	dst = appendString(dst, r.Backend)
	dst = appendKey(dst, &eventKeys[r.Event])
	return appendUint(dst, r.Cookie)
}

// appendRecord appends r leaving out the tcp_info members in omit.
func (e *Encoder) appendRecord(dst []byte, r *flow.Record, omit *flow.Mask) []byte {
	dst = e.appendHead(dst, r)
	if r.Existing && r.Event == flow.EventOpen {
		dst = append(dst, `,"existing":true`...)
	}
	dst = append(dst, `,"cgroup_id":`...)
	dst = appendUint(dst, r.CgroupID)
	if r.Cgroup != "" {
		dst = append(dst, `,"cgroup":`...)
		dst = appendString(dst, r.Cgroup)
	}
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
	dst = appendKey(dst, &stateKeys[r.State])
	if r.Event == flow.EventState || (r.Event == flow.EventClose && r.OldState != 0) {
		dst = appendKey(dst, &oldStateKeys[r.OldState])
	}
	if r.CA != "" {
		dst = append(dst, `,"ca":`...)
		dst = appendString(dst, r.CA)
	}
	if r.PID != 0 {
		dst = append(dst, `,"pid":`...)
		dst = appendUint(dst, uint64(r.PID))
	}
	if r.Comm != "" {
		dst = append(dst, `,"comm":`...)
		dst = appendString(dst, r.Comm)
	}
	if r.Info.Present.IsEmpty() {
		return append(dst, '}')
	}
	dst = append(dst, `,"tcp_info":{`...)
	dst = appendMembers(dst, &r.Info, omit)
	return append(dst, "}}"...)
}

// eventKeys, stateKeys and oldStateKeys hold `,"event":"sample","cookie":`
// and the like for every value of the uint8 Event and State, so that a
// name and the keys around it are one 32-byte store. They are computed
// once and only read.
var (
	eventKeys = func() (keys [256]key) {
		for e := range keys {
			keys[e] = newKey(`,"event":"` + flow.Event(e).String() + `","cookie":`)
		}
		return keys
	}()
	stateKeys = func() (keys [256]key) {
		for s := range keys {
			keys[s] = newKey(`,"state":"` + flow.State(s).String() + `"`)
		}
		return keys
	}()
	oldStateKeys = func() (keys [256]key) {
		for s := range keys {
			keys[s] = newKey(`,"old_state":"` + flow.State(s).String() + `"`)
		}
		return keys
	}()
)

// keyWidth is how many bytes of a key are stored, a power of two: every
// key is shorter (TestKeysFit).
const keyWidth = 32

// key is a string of up to keyWidth bytes padded to keyWidth, so that
// writing it is one fixed-size store; n is its real length.
type key struct {
	text [keyWidth]byte
	n    int
}

func newKey(s string) key {
	var k key
	k.n = copy(k.text[:], s)
	return k
}

// appendKey appends k.
func appendKey(dst []byte, k *key) []byte {
	dst = slices.Grow(dst, keyWidth)
	n := len(dst)
	*(*[keyWidth]byte)(dst[n : n+keyWidth]) = k.text
	return dst[:n+k.n]
}

// memberKeys holds `,"name":` for every field. It is computed once and
// only read.
var memberKeys = func() (keys [flow.NumFields]key) {
	for f := range flow.NumFields {
		keys[f] = newKey(`,"` + f.Name() + `":`)
	}
	return keys
}()

// membersRoom is the room appendMembers reserves: a window of a key store
// and a number store for every member.
const membersRoom = int(flow.NumFields) * (keyWidth + uintRoom)

// appendMembers appends the present members of info that omit does not
// name, in Field order, as `"name":value` separated by commas, after the
// '{' that ends dst. It visits the set bits of the presence mask only.
// Each member is written into a fixed-size window, so that the stores need
// no bounds checks of their own.
func appendMembers(dst []byte, info *flow.TCPInfo, omit *flow.Mask) []byte {
	dst = slices.Grow(dst, membersRoom)
	// Every key starts with a comma: the first is written over the '{',
	// which is put back at the end.
	brace := len(dst) - 1
	n := brace
	b := dst[:cap(dst)]
	for f := range info.Present.AndNot(*omit).Fields() {
		k := &memberKeys[f]
		m := (*[keyWidth + uintRoom]byte)(b[n : n+keyWidth+uintRoom])
		*(*[keyWidth]byte)(m[:]) = k.text
		kn := k.n & (keyWidth - 1) // k.n < keyWidth: the mask shows it to the compiler
		if v := info.Values[f]; v < 10 {
			m[kn] = byte('0' + v) // the most common value, without a call
			n += kn + 1
		} else {
			n += kn + putUint((*[uintRoom]byte)(m[kn:kn+uintRoom]), v)
		}
	}
	b[brace] = '{'
	return dst[:max(n, brace+1)]
}

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

// uintRoom is the room putUint needs: a uint64 has up to 20 digits, and
// they are stored 8 at a time.
const uintRoom = 24

// appendUint appends v in decimal.
func appendUint(dst []byte, v uint64) []byte {
	dst = slices.Grow(dst, uintRoom)
	n := len(dst)
	return dst[:n+putUint((*[uintRoom]byte)(dst[n:n+uintRoom]), v)]
}

// putUint writes v in decimal at the start of m and returns its length.
func putUint(m *[uintRoom]byte, v uint64) int {
	switch {
	case v < 10:
		m[0] = byte('0' + v)
		return 1
	case v < 100:
		m[0], m[1] = digitPairs[2*v], digitPairs[2*v+1]
		return 2
	case v < 1e8:
		l := digitCount(uint32(v))
		binary.LittleEndian.PutUint64(m[:8], ascii8(uint32(v))>>((64-8*uint(l))&63))
		return l
	}
	return putLongUint(m, v)
}

// putLongUint is putUint for v >= 1e8.
func putLongUint(m *[uintRoom]byte, v uint64) int {
	var hi uint64
	if v >= 1e16 {
		hi = v / 1e16 // at most 1844
		v -= hi * 1e16
	}
	mid, lo := uint32(v/1e8), uint32(v%1e8)
	l := 0
	if hi > 0 {
		l = digitCount(uint32(hi))
		binary.LittleEndian.PutUint64(m[:8], ascii8(uint32(hi))>>((64-8*uint(l))&63))
		binary.LittleEndian.PutUint64(m[l:l+8], ascii8(mid))
		l += 8
	} else {
		l = digitCount(mid)
		binary.LittleEndian.PutUint64(m[:8], ascii8(mid)>>((64-8*uint(l))&63))
	}
	binary.LittleEndian.PutUint64(m[l:l+8], ascii8(lo))
	return l + 8
}

// digitCount returns the number of decimal digits of x (1 for 0): x plus
// the entry for its bit length carries into bit 32 exactly when x reaches
// the next power of ten (Daniel Lemire's method).
func digitCount(x uint32) int {
	return int((uint64(x) + digitCountTable[bits.Len32(x)]) >> 32)
}

// digitCountTable[i] is, for the numbers of bit length i, their smallest
// digit count in the upper half, and 2^32 minus the power of ten that adds
// a digit in the lower half. Computed once and only read.
var digitCountTable = func() (t [33]uint64) {
	for i := range t {
		lo := uint64(1) << max(i-1, 0) // smallest number of bit length i (0 for i = 0: 1 digit too)
		d, p := uint64(1), uint64(10)
		for p <= lo {
			d, p = d+1, p*10
		}
		t[i] = d << 32
		if p < 1<<32 {
			t[i] += 1<<32 - p
		}
	}
	return t
}()

// ascii8 returns the 8 decimal digits of x < 1e8 in ASCII, the most
// significant in the lowest byte, so that a little-endian store puts them
// in reading order: two table entries of four digits each.
func ascii8(x uint32) uint64 {
	return uint64(digitQuads[x/10000]) | uint64(digitQuads[x%10000])<<32
}

// digitQuads[i] is the four ASCII digits of i < 10000 in a little-endian
// uint32 (40 KB: the entries in use stay cached, as a flow's values change
// little from one record to the next). Computed once and only read.
var digitQuads = func() (t [10000]uint32) {
	for i := range t {
		t[i] = uint32('0'+i/1000) | uint32('0'+i/100%10)<<8 | uint32('0'+i/10%10)<<16 | uint32('0'+i%10)<<24
	}
	return t
}()

// timeLayout is RFC 3339 with exactly nine fractional digits.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// The instants appendTime formats itself: years 0000 to 9999 in UTC.
var (
	minTimeSec = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC).Unix()
	maxTimeSec = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC).Unix()
)

// timeLen is the length of "2006-01-02T15:04:05.000000000Z", and
// timePrefixLen that of its part up to the second, "2006-01-02T15:04:05.".
const (
	timeLen       = 30
	timePrefixLen = 20
)

// appendTime appends t in UTC as timeLayout does. Only the nanoseconds are
// formatted for every record; the rest when the second changes.
func (e *Encoder) appendTime(dst []byte, t time.Time) []byte {
	sec := t.Unix()
	if sec != e.sec || !e.valid {
		if sec < minTimeSec || sec > maxTimeSec {
			return t.UTC().AppendFormat(dst, timeLayout)
		}
		e.sec, e.valid = sec, true
		putTimePrefix(&e.prefix, sec)
	}
	ns := uint32(t.Nanosecond())
	dst = slices.Grow(dst, timeLen)
	n := len(dst)
	b := (*[timeLen]byte)(dst[n : n+timeLen])
	*(*[timePrefixLen]byte)(b[:timePrefixLen]) = e.prefix
	b[20] = byte('0' + ns/1e8)
	binary.LittleEndian.PutUint64(b[21:29], ascii8(ns%1e8))
	b[29] = 'Z'
	return dst[:n+timeLen]
}

// putTimePrefix writes the Unix second sec, within years 0000..9999, as
// "2006-01-02T15:04:05.". It converts the Unix time to a civil date itself
// (a few multiplications) rather than calling time.Time's Date and Clock,
// which each redo that work.
func putTimePrefix(b *[timePrefixLen]byte, sec int64) {
	s := uint64(sec - minTimeSec) // since 0000-01-01T00:00:00Z
	days := uint32(s / 86400)
	sod := uint32(s - uint64(days)*86400)
	year, month, day := civilDate(days)
	putPair(b[0:2], year/100)
	putPair(b[2:4], year%100)
	b[4] = '-'
	putPair(b[5:7], month)
	b[7] = '-'
	putPair(b[8:10], day)
	b[10] = 'T'
	putPair(b[11:13], sod/3600)
	b[13] = ':'
	putPair(b[14:16], sod/60%60)
	b[16] = ':'
	putPair(b[17:19], sod%60)
	b[19] = '.'
}

// civilDate returns the proleptic Gregorian date of the day days after
// 0000-01-01 (Howard Hinnant's civil_from_days, in unsigned arithmetic).
func civilDate(days uint32) (year, month, day uint32) {
	// Count from 0400 BC March 1st: a 400-year cycle starts there, and a
	// year that starts in March ends with the leap day.
	z := days + 146097 - 60
	era := z / 146097
	doe := z - era*146097                                  // day of the era, 0..146096
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365 // year of the era, 0..399
	doy := doe - (365*yoe + yoe/4 - yoe/100)               // day of the March-based year, 0..365
	mp := (5*doy + 2) / 153                                // month, 0 = March
	day = doy - (153*mp+2)/5 + 1
	month = mp + 3
	if mp >= 10 {
		month = mp - 9
	}
	year = yoe + era*400
	if month <= 2 {
		year++
	}
	return year - 400, month, day
}

// putPair writes v (0..99) as two digits.
func putPair(b []byte, v uint32) {
	b[0], b[1] = digitPairs[v*2], digitPairs[v*2+1]
}

// ipv4Octets holds "0." to "255." padded to 4 bytes, with their lengths:
// writing an octet is one 4-byte store. Computed once and only read.
var ipv4Octets = func() (t [256]struct {
	text [4]byte
	n    int
}) {
	for i := range t {
		t[i].n = copy(t[i].text[:], strconv.Itoa(i)+".")
	}
	return t
}()

// appendAddr appends a quoted address; the zero Addr becomes "".
func appendAddr(dst []byte, a netip.Addr) []byte {
	if a.Is4() {
		dst = slices.Grow(dst, 2+4*4)
		n := len(dst)
		b := dst[:n+2+4*4]
		b[n] = '"'
		n++
		for _, o := range a.As4() {
			t := &ipv4Octets[o]
			*(*[4]byte)(b[n:]) = t.text
			n += t.n
		}
		b[n-1] = '"' // over the last dot
		return b[:n]
	}
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
	Existing bool                       `json:"existing"`
	CgroupID uint64                     `json:"cgroup_id"`
	Cgroup   string                     `json:"cgroup"`
	Family   uint8                      `json:"family"`
	LAddr    string                     `json:"laddr"`
	LPort    uint16                     `json:"lport"`
	RAddr    string                     `json:"raddr"`
	RPort    uint16                     `json:"rport"`
	State    string                     `json:"state"`
	OldState *string                    `json:"old_state"`
	CA       string                     `json:"ca"`
	PID      uint32                     `json:"pid"`
	Comm     string                     `json:"comm"`
	Partial  bool                       `json:"partial"`
	TCPInfo  map[string]json.RawMessage `json:"tcp_info"`
}

// ParseJSON reads one record written by AppendJSON into r (overwriting
// it). Unknown keys, in tcp_info too, are errors. It is meant for tools and
// tests, not for speed. The record of a partial sample (SamplesChanges)
// holds only the members its line has: ParseLine says which lines are
// partial, and a Filler completes them.
func ParseJSON(line []byte, r *flow.Record) error {
	_, err := ParseLine(line, r)
	return err
}

// ParseLine is ParseJSON that also reports whether the line is a partial
// sample ("partial":true).
func ParseLine(line []byte, r *flow.Record) (partial bool, err error) {
	var w wireRecord
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return false, fmt.Errorf("decoding record: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return false, errors.New("decoding record: data after the object")
	}
	*r = flow.Record{}

	if w.Time == nil || w.Backend == nil || w.Event == nil {
		return false, errors.New("decoding record: time, backend and event are required")
	}
	t, err := time.Parse(time.RFC3339Nano, *w.Time)
	if err != nil {
		return false, fmt.Errorf("decoding time: %w", err)
	}
	r.Time = t.UTC()
	if y := r.Time.Year(); y < 0 || y > 9999 {
		return false, fmt.Errorf("decoding time: %q is outside years 0000..9999 in UTC", *w.Time)
	}
	r.Backend = *w.Backend
	if r.Event, err = parseEvent(*w.Event); err != nil {
		return false, err
	}
	r.Cookie = w.Cookie
	r.CgroupID = w.CgroupID
	r.Cgroup = w.Cgroup
	r.Family = w.Family
	if r.LocalAddr, err = parseAddr("laddr", w.LAddr); err != nil {
		return false, err
	}
	if r.RemoteAddr, err = parseAddr("raddr", w.RAddr); err != nil {
		return false, err
	}
	r.LocalPort = w.LPort
	r.RemotePort = w.RPort
	if r.State, err = parseState("state", w.State); err != nil {
		return false, err
	}
	if w.OldState != nil {
		if r.Event != flow.EventState && r.Event != flow.EventClose {
			return false, fmt.Errorf("decoding record: old_state on a %s event", r.Event)
		}
		if r.OldState, err = parseState("old_state", *w.OldState); err != nil {
			return false, err
		}
	}
	r.CA = w.CA
	if w.Comm != "" && w.PID == 0 {
		return false, errors.New("decoding record: comm without pid")
	}
	r.PID, r.Comm = w.PID, w.Comm
	for name, raw := range w.TCPInfo {
		f, ok := flow.FieldByName(name)
		if !ok {
			return false, fmt.Errorf("decoding tcp_info: unknown member %q", name)
		}
		v, err := strconv.ParseUint(string(raw), 10, 64)
		if err != nil {
			return false, fmt.Errorf("decoding tcp_info: %s: %s is not an unsigned 64-bit integer", name, raw)
		}
		r.Info.Set(f, v)
	}
	if w.Partial && r.Event != flow.EventSample {
		return false, fmt.Errorf("decoding record: partial on a %s event", r.Event)
	}
	if w.Existing && r.Event != flow.EventOpen {
		return false, fmt.Errorf("decoding record: existing on a %s event", r.Event)
	}
	r.Existing = w.Existing
	return w.Partial, nil
}

func parseEvent(s string) (flow.Event, error) {
	if e, ok := flow.ParseEvent(s); ok {
		return e, nil
	}
	if s == flow.Event(0).String() {
		return 0, nil
	}
	return 0, fmt.Errorf("decoding event: unknown event %q", s)
}

func parseState(key, s string) (flow.State, error) {
	if st, ok := flow.ParseState(s); ok {
		return st, nil
	}
	if s == flow.State(0).String() || s == "" {
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
