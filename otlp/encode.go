package otlp

import (
	"math/bits"
	"net/netip"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/flowd/flowd/flow"
)

// The protobuf field tags (number << 3 | wire type) of the messages of
// opentelemetry/proto/collector/logs/v1/logs_service.proto and the
// messages it nests that flowd writes.
const (
	tagResourceLogs = 1<<3 | 2 // ExportLogsServiceRequest.resource_logs

	tagResource  = 1<<3 | 2 // ResourceLogs.resource
	tagScopeLogs = 2<<3 | 2 // ResourceLogs.scope_logs

	tagResourceAttribute = 1<<3 | 2 // Resource.attributes

	tagScope     = 1<<3 | 2 // ScopeLogs.scope
	tagLogRecord = 2<<3 | 2 // ScopeLogs.log_records

	tagScopeName    = 1<<3 | 2 // InstrumentationScope.name
	tagScopeVersion = 2<<3 | 2 // InstrumentationScope.version

	tagTime      = 1<<3 | 1  // LogRecord.time_unix_nano, fixed64
	tagAttribute = 6<<3 | 2  // LogRecord.attributes
	tagEventName = 12<<3 | 2 // LogRecord.event_name

	tagKey   = 1<<3 | 2 // KeyValue.key
	tagValue = 2<<3 | 2 // KeyValue.value

	tagStringValue = 1<<3 | 2 // AnyValue.string_value
	tagBoolValue   = 2<<3 | 0 // AnyValue.bool_value, varint
	tagIntValue    = 3<<3 | 0 // AnyValue.int_value, varint
)

// Attribute keys of a log record. The header keys of a JSON line that
// OpenTelemetry's semantic conventions name (the addresses, ports and
// family) take those names; flowd's own keys are under "flowd.", and each
// tcp_info member is "tcp_info." and its JSON name.
const (
	AttrBackend      = "flowd.backend"
	AttrCookie       = "flowd.cookie"
	AttrExisting     = "flowd.existing" // true on the open record of a flow found running; else absent
	AttrCgroupID     = "flowd.cgroup_id"
	AttrCgroup       = "flowd.cgroup" // its path below the cgroup2 mount, when known
	AttrNetworkType  = "network.type" // "ipv4" or "ipv6", from family 4 or 6
	AttrLocalAddress = "network.local.address"
	AttrLocalPort    = "network.local.port"
	AttrPeerAddress  = "network.peer.address"
	AttrPeerPort     = "network.peer.port"
	AttrState        = "flowd.state"
	AttrOldState     = "flowd.old_state" // on state records, and close records that have one
	AttrCA           = "flowd.ca"
	AttrPID          = "process.pid" // the process that connected the flow; absent when unknown
	AttrComm         = "flowd.comm"  // its name (the kernel's comm), with process.pid
	AttrTCPInfo      = "tcp_info."   // followed by a member's JSON name
)

// Resource attribute keys (semantic conventions).
const (
	ResourceServiceName    = "service.name"
	ResourceServiceVersion = "service.version"
	ResourceHostName       = "host.name"
)

// ServiceName is the service.name of flowd's resource.
const ServiceName = "flowd"

// EventName returns the event name of the log records of event e:
// "flowd.open", "flowd.sample", "flowd.state" or "flowd.close".
func EventName(e flow.Event) string { return "flowd." + e.String() }

// Resource describes the flowd that exports: its host and version.
type Resource struct {
	HostName string // host.name
	Version  string // service.version
}

// attributes are the resource's attributes, keys and values:
// service.name, and host.name and service.version when known.
func (r Resource) attributes() [][2]string {
	attrs := [][2]string{{ResourceServiceName, ServiceName}}
	if r.HostName != "" {
		attrs = append(attrs, [2]string{ResourceHostName, validUTF8(r.HostName)})
	}
	if r.Version != "" {
		attrs = append(attrs, [2]string{ResourceServiceVersion, validUTF8(r.Version)})
	}
	return attrs
}

// encoder appends records as OTLP log records, protobuf-encoded, and frames
// a batch of them as an ExportLogsServiceRequest. Every log record shares
// one resource and one instrumentation scope, written once per request.
//
// It writes the wire format directly instead of filling the messages of
// an OTLP library and marshalling them: with some 80 attributes a record,
// the libraries' work per attribute made exporting 7 to 70 times dearer
// (docs/performance.md).
type encoder struct {
	resource []byte // the ResourceLogs.resource field
	scope    []byte // the ScopeLogs.scope field
	// members[f] is the KeyValue field of tcp_info member f up to its
	// value (newMemberKey).
	members [flow.NumFields]memberKey
	// exported masks the tcp_info members exported.
	exported flow.Mask
}

// eventNameFields holds the LogRecord.event_name field of every Event.
// It is computed once and only read.
var eventNameFields = func() (fields [256][]byte) {
	for e := range fields {
		fields[e] = appendString(nil, tagEventName, EventName(flow.Event(e)))
	}
	return fields
}()

// newEncoder returns an encoder of records from res's flowd that exports
// the listed tcp_info members (every member when none is listed).
func newEncoder(res Resource, members []flow.Field) *encoder {
	e := &encoder{}
	var attrs []byte
	for _, kv := range res.attributes() {
		attrs = appendStringKV(attrs, tagResourceAttribute, kv[0], kv[1])
	}
	e.resource = appendString(nil, tagResource, attrs)

	scope := appendString(nil, tagScopeName, ServiceName)
	if res.Version != "" {
		scope = appendString(scope, tagScopeVersion, validUTF8(res.Version))
	}
	e.scope = appendString(nil, tagScope, scope)

	e.exported = flow.AllFields()
	if len(members) > 0 {
		e.exported = flow.MaskOf(members...)
	}
	for f := range e.exported.Fields() {
		e.members[f] = newMemberKey(AttrTCPInfo + f.Name())
	}
	return e
}

// keyWidth is how many bytes of a memberKey are stored, so that writing one
// is a fixed-size store: more than the longest (TestKeysFit).
const keyWidth = 48

// memberKey is the start of the KeyValue attribute field of a tcp_info
// member, up to its int value, padded to keyWidth:
//
//	tag, len, tag key, len(key), key, tag value, len, tag int
//
// The two lengths depend on the value's varint (appendMember). n is the
// real length.
type memberKey struct {
	text [keyWidth]byte
	n    int
}

func newMemberKey(key string) memberKey {
	var k memberKey
	b := append(k.text[:0], tagAttribute, 0, tagKey, byte(len(key)))
	b = append(b, key...)
	k.n = len(append(b, tagValue, 0, tagIntValue))
	return k
}

// membersRoom is the room appendRecord reserves for the tcp_info members:
// a window of a key store and the longest varint for every member.
const membersRoom = int(flow.NumFields) * (keyWidth + maxVarintLen)

// maxRecordLen bounds the bytes of one encoded record whose cgroup path
// is at most maxCgroupLen bytes (TestLongestRecord); a longer path, rare
// even in Kubernetes' deep hierarchies, makes a longer record.
const maxRecordLen = 3584

// maxCgroupLen is the longest cgroup path maxRecordLen allows for.
const maxCgroupLen = 512

// maxVarintLen is the length of the longest varint.
const maxVarintLen = 10

// appendRecord appends r as a ScopeLogs.log_records field.
func (e *encoder) appendRecord(dst []byte, r *flow.Record) []byte {
	// The record's length comes before it and is known only after it:
	// reserve the two bytes of the length of every record flowd writes
	// (128 to 16383 bytes), and move the record when it needs one or three.
	dst = append(dst, tagLogRecord, 0, 0)
	start := len(dst)

	if t := uint64(r.Time.UnixNano()); t != 0 { // proto3 leaves zero out
		dst = append(dst, tagTime)
		dst = protowire.AppendFixed64(dst, t)
	}

	dst = appendStringKV(dst, tagAttribute, AttrBackend, validUTF8(r.Backend))
	dst = appendIntKV(dst, AttrCookie, r.Cookie)
	if r.Existing && r.Event == flow.EventOpen {
		dst = appendTrueKV(dst, AttrExisting)
	}
	dst = appendIntKV(dst, AttrCgroupID, r.CgroupID)
	if r.Cgroup != "" {
		dst = appendStringKV(dst, tagAttribute, AttrCgroup, validUTF8(r.Cgroup))
	}
	switch r.Family {
	case 4:
		dst = appendStringKV(dst, tagAttribute, AttrNetworkType, "ipv4")
	case 6:
		dst = appendStringKV(dst, tagAttribute, AttrNetworkType, "ipv6")
	}
	if r.LocalAddr.IsValid() {
		dst = appendAddrKV(dst, AttrLocalAddress, r.LocalAddr)
	}
	dst = appendIntKV(dst, AttrLocalPort, uint64(r.LocalPort))
	if r.RemoteAddr.IsValid() {
		dst = appendAddrKV(dst, AttrPeerAddress, r.RemoteAddr)
	}
	dst = appendIntKV(dst, AttrPeerPort, uint64(r.RemotePort))
	dst = appendStringKV(dst, tagAttribute, AttrState, r.State.String())
	if r.Event == flow.EventState || (r.Event == flow.EventClose && r.OldState != 0) {
		dst = appendStringKV(dst, tagAttribute, AttrOldState, r.OldState.String())
	}
	if r.CA != "" {
		dst = appendStringKV(dst, tagAttribute, AttrCA, validUTF8(r.CA))
	}
	if r.PID != 0 {
		dst = appendIntKV(dst, AttrPID, uint64(r.PID))
	}
	if r.Comm != "" {
		dst = appendStringKV(dst, tagAttribute, AttrComm, validUTF8(r.Comm))
	}
	dst = slices.Grow(dst, membersRoom)
	for w := range flow.MaskWords {
		for word := r.Info.Present[w] & e.exported[w]; word != 0; word &= word - 1 {
			f := flow.Field(w*64 + bits.TrailingZeros64(word))
			dst = appendMember(dst, &e.members[f], r.Info.Values[f])
		}
	}
	dst = append(dst, eventNameFields[r.Event]...)

	n := len(dst) - start
	size := protowire.SizeVarint(uint64(n))
	switch {
	case size < 2:
		dst = slices.Delete(dst, start-1, start)
		start--
	case size > 2:
		dst = slices.Insert(dst, start, make([]byte, size-2)...)
		start += size - 2
	}
	protowire.AppendVarint(dst[start-size:start-size], uint64(n))
	return dst
}

// appendMember appends the attribute of a tcp_info member with key k and
// value v; dst must have membersRoom to spare. tcp_info members are
// unsigned; OTLP's integers are int64, so a member above 2^63-1
// (max_pacing_rate's "unlimited", 2^64-1) is sent as the int64 of the same
// bits, -1, from which uint64() recovers it.
func appendMember(dst []byte, k *memberKey, v uint64) []byte {
	n := len(dst)
	b := dst[n : n+keyWidth+maxVarintLen]
	*(*[keyWidth]byte)(b) = k.text
	i := k.n
	for ; v >= 0x80; v >>= 7 {
		b[i] = byte(v) | 0x80
		i++
	}
	b[i] = byte(v)
	i++
	valueLen := i - k.n
	b[1] = byte(k.n - 2 + valueLen) // the KeyValue, after its tag and length
	b[k.n-2] = byte(1 + valueLen)   // the AnyValue: its tag and varint
	return dst[:n+i]
}

// appendIntKV appends a KeyValue attribute field with key and int value v.
func appendIntKV(dst []byte, key string, v uint64) []byte {
	vlen := protowire.SizeVarint(v)
	dst = append(dst, tagAttribute, byte(2+len(key)+2+1+vlen), tagKey, byte(len(key)))
	dst = append(dst, key...)
	dst = append(dst, tagValue, byte(1+vlen), tagIntValue)
	return protowire.AppendVarint(dst, v)
}

// appendTrueKV appends a KeyValue attribute field with key and the bool
// value true.
func appendTrueKV(dst []byte, key string) []byte {
	dst = append(dst, tagAttribute, byte(2+len(key)+2+2), tagKey, byte(len(key)))
	dst = append(dst, key...)
	return append(dst, tagValue, 2, tagBoolValue, 1)
}

// appendAddrKV appends a KeyValue attribute field with key and the text of
// address a.
func appendAddrKV(dst []byte, key string, a netip.Addr) []byte {
	var text [64]byte // an IPv6 address (the kernel's have no zone) fits
	return appendStringKV(dst, tagAttribute, key, a.AppendTo(text[:0]))
}

// appendStringKV appends a field tag holding a KeyValue with key and
// string value v.
func appendStringKV[S string | []byte](dst []byte, tag byte, key string, v S) []byte {
	keyLen := 1 + protowire.SizeBytes(len(key))
	valueLen := 1 + protowire.SizeBytes(len(v))         // AnyValue
	kvLen := keyLen + 1 + protowire.SizeBytes(valueLen) // KeyValue
	dst = append(dst, tag)
	dst = protowire.AppendVarint(dst, uint64(kvLen))
	dst = appendString(dst, tagKey, key)
	dst = append(dst, tagValue)
	dst = protowire.AppendVarint(dst, uint64(valueLen))
	return appendString(dst, tagStringValue, v)
}

// appendString appends a length-delimited field tag holding s.
func appendString[S string | []byte](dst []byte, tag byte, s S) []byte {
	dst = append(dst, tag)
	dst = protowire.AppendVarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// headerRoom bounds the bytes frame puts before a batch's records.
func (e *encoder) headerRoom() int {
	return 2*(1+binaryVarintLen) + len(e.resource) + len(e.scope)
}

// binaryVarintLen is the longest varint of a length.
const binaryVarintLen = 10

// frame writes the ExportLogsServiceRequest header of the log records in
// buf[room:] at the end of buf[:room] and returns the whole request, a
// subslice of buf. room must be at least headerRoom().
func (e *encoder) frame(buf []byte, room int) []byte {
	records := len(buf) - room
	scopeLogs := len(e.scope) + records
	resourceLogs := len(e.resource) + 1 + protowire.SizeVarint(uint64(scopeLogs)) + scopeLogs

	var h1, h2 [1 + binaryVarintLen]byte
	outer := protowire.AppendVarint(append(h1[:0], tagResourceLogs), uint64(resourceLogs))
	inner := protowire.AppendVarint(append(h2[:0], tagScopeLogs), uint64(scopeLogs))
	at := room - len(outer) - len(e.resource) - len(inner) - len(e.scope)
	w := buf[at:room]
	w = w[copy(w, outer):]
	w = w[copy(w, e.resource):]
	w = w[copy(w, inner):]
	copy(w, e.scope)
	return buf[at:]
}

// validUTF8 returns s with invalid UTF-8 replaced by U+FFFD: protobuf
// strings must be valid UTF-8, and the JSON output does the same.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}
