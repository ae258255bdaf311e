package otlp

import (
	"bytes"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	"github.com/flowd/flowd/flow"
)

// realisticRecord is a sample of a busy loopback flow with every member
// present, max_pacing_rate "unlimited" (2^64-1) among them.
func realisticRecord() flow.Record {
	r := flow.Record{
		Time: time.Unix(1_795_000_000, 123_456_789), Backend: "ebpf", Event: flow.EventSample,
		Cookie: 5601, CgroupID: 18360, Cgroup: "system.slice/iperf3.service", Family: 4,
		LocalAddr: netip.MustParseAddr("10.1.2.3"), RemoteAddr: netip.MustParseAddr("10.9.8.7"),
		LocalPort: 60112, RemotePort: 5201, State: flow.StateEstablished, CA: "cubic",
	}
	values := map[flow.Field]uint64{
		flow.FieldState: 1, flow.FieldOptions: 7, flow.FieldSndWscale: 10, flow.FieldRcvWscale: 10,
		flow.FieldRTO: 204000, flow.FieldATO: 40000, flow.FieldSndMSS: 65483, flow.FieldRcvMSS: 536,
		flow.FieldUnacked: 52, flow.FieldLastDataRecv: 8, flow.FieldPMTU: 65535,
		flow.FieldRcvSsthresh: 65495, flow.FieldRTT: 10, flow.FieldRTTVar: 74,
		flow.FieldSndSsthresh: 2147483647, flow.FieldSndCwnd: 52, flow.FieldAdvMSS: 65483,
		flow.FieldReordering: 3, flow.FieldRcvSpace: 65495, flow.FieldPacingRate: 681023200000,
		flow.FieldMaxPacingRate: math.MaxUint64, flow.FieldBytesAcked: 33423361, flow.FieldSegsOut: 722,
		flow.FieldSegsIn: 342, flow.FieldNotsentBytes: 3601618, flow.FieldMinRTT: 2,
		flow.FieldDataSegsOut: 720, flow.FieldDeliveryRate: 39289800000, flow.FieldBusyTime: 8000,
		flow.FieldRwndLimited: 8000, flow.FieldDelivered: 721, flow.FieldBytesSent: 33423360,
		flow.FieldSndWnd: 23552, flow.FieldRcvWnd: 65536,
	}
	for f := range flow.NumFields {
		r.Info.Set(f, values[f])
	}
	return r
}

// reference builds the request of records as the OTLP protobuf messages
// generated from the specification's .proto files; its marshalled bytes
// are what the encoder must write. LogsData has the wire format of
// ExportLogsServiceRequest (both are resource_logs = 1), without the
// package of the latter bringing a gRPC gateway along.
func reference(res Resource, members []flow.Field, records []flow.Record) *logspb.LogsData {
	str := func(k, v string) *commonpb.KeyValue {
		v = strings.ToValidUTF8(v, "\uFFFD")
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
	}
	yes := func(k string) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: true}}}
	}
	num := func(k string, v uint64) *commonpb.KeyValue {
		return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: int64(v)}}}
	}
	resAttrs := []*commonpb.KeyValue{str("service.name", "flowd")}
	if res.HostName != "" {
		resAttrs = append(resAttrs, str("host.name", res.HostName))
	}
	if res.Version != "" {
		resAttrs = append(resAttrs, str("service.version", res.Version))
	}
	exported := func(f flow.Field) bool {
		if len(members) == 0 {
			return true
		}
		for _, m := range members {
			if m == f {
				return true
			}
		}
		return false
	}
	var logs []*logspb.LogRecord
	for _, r := range records {
		attrs := []*commonpb.KeyValue{str("flowd.backend", r.Backend), num("flowd.cookie", r.Cookie)}
		if r.Existing && r.Event == flow.EventOpen {
			attrs = append(attrs, yes("flowd.existing"))
		}
		attrs = append(attrs, num("flowd.cgroup_id", r.CgroupID))
		if r.Cgroup != "" {
			attrs = append(attrs, str("flowd.cgroup", r.Cgroup))
		}
		switch r.Family {
		case 4:
			attrs = append(attrs, str("network.type", "ipv4"))
		case 6:
			attrs = append(attrs, str("network.type", "ipv6"))
		}
		if r.LocalAddr.IsValid() {
			attrs = append(attrs, str("network.local.address", r.LocalAddr.String()))
		}
		attrs = append(attrs, num("network.local.port", uint64(r.LocalPort)))
		if r.RemoteAddr.IsValid() {
			attrs = append(attrs, str("network.peer.address", r.RemoteAddr.String()))
		}
		attrs = append(attrs, num("network.peer.port", uint64(r.RemotePort)), str("flowd.state", r.State.String()))
		if r.Event == flow.EventState || (r.Event == flow.EventClose && r.OldState != 0) {
			attrs = append(attrs, str("flowd.old_state", r.OldState.String()))
		}
		if r.CA != "" {
			attrs = append(attrs, str("flowd.ca", r.CA))
		}
		if r.PID != 0 {
			attrs = append(attrs, num("process.pid", uint64(r.PID)))
		}
		if r.Comm != "" {
			attrs = append(attrs, str("flowd.comm", r.Comm))
		}
		for f := range flow.NumFields {
			if v, ok := r.Info.Get(f); ok && exported(f) {
				attrs = append(attrs, num("tcp_info."+f.Name(), v))
			}
		}
		logs = append(logs, &logspb.LogRecord{
			TimeUnixNano: uint64(r.Time.UnixNano()),
			Attributes:   attrs,
			EventName:    "flowd." + r.Event.String(),
		})
	}
	return &logspb.LogsData{ResourceLogs: []*logspb.ResourceLogs{{
		Resource: &resourcepb.Resource{Attributes: resAttrs},
		ScopeLogs: []*logspb.ScopeLogs{{
			Scope:      &commonpb.InstrumentationScope{Name: "flowd", Version: strings.ToValidUTF8(res.Version, "\uFFFD")},
			LogRecords: logs,
		}},
	}}}
}

// encode frames records as the exporter does.
func encode(e *encoder, records []flow.Record) []byte {
	room := e.headerRoom()
	buf := make([]byte, room)
	for i := range records {
		buf = e.appendRecord(buf, &records[i])
	}
	return e.frame(buf, room)
}

func TestEncodeMatchesReference(t *testing.T) {
	full := realisticRecord()

	state := full
	state.Event, state.State, state.OldState = flow.EventState, flow.StateFinWait1, flow.StateEstablished

	v6 := full
	v6.Family, v6.LocalAddr, v6.RemoteAddr = 6, netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::ffff:10.0.0.1")
	v6.Backend, v6.Event, v6.CA, v6.Existing = "netlink", flow.EventOpen, "", true

	sparse := flow.Record{Time: time.Unix(0, 1), Backend: "ebpf", Event: flow.EventClose, Cookie: math.MaxUint64}
	sparse.Info.Set(flow.FieldBytesAcked, 0)
	sparse.Info.Set(flow.FieldReceivedCEBytes, 1<<63)

	// a record longer than 16 KiB would need a 3-byte length; one below
	// 128 bytes a 1-byte one (the varint moves the record back).
	long := full
	long.CA = string(bytes.Repeat([]byte("x"), 20000))
	short := flow.Record{Time: time.Unix(1, 0), Backend: "b", Event: flow.EventOpen}

	for _, tc := range []struct {
		name    string
		res     Resource
		members []flow.Field
		records []flow.Record
	}{
		{"one full sample", Resource{HostName: "web-1", Version: "v1.2.3"}, nil, []flow.Record{full}},
		{"batch", Resource{HostName: "web-1", Version: "v1.2.3"}, nil, []flow.Record{full, state, v6, sparse, full}},
		{"no host or version", Resource{}, nil, []flow.Record{state}},
		{"members", Resource{HostName: "h"}, []flow.Field{flow.FieldRTT, flow.FieldSndCwnd, flow.FieldReceivedCEBytes}, []flow.Record{full, sparse}},
		{"lengths", Resource{HostName: "h"}, nil, []flow.Record{short, long, short}},
		{"empty batch", Resource{HostName: "h"}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := proto.MarshalOptions{Deterministic: true}.Marshal(reference(tc.res, tc.members, tc.records))
			if err != nil {
				t.Fatal(err)
			}
			got := encode(newEncoder(tc.res, tc.members), tc.records)
			if !bytes.Equal(got, want) {
				t.Errorf("encoded request differs from the reference\n got %x\nwant %x", got, want)
			}
			var back logspb.LogsData
			if err := proto.Unmarshal(got, &back); err != nil {
				t.Fatalf("the request does not decode: %v", err)
			}
		})
	}
}

// TestKeysFit checks that every int attribute's KeyValue is shorter than
// 128 bytes, as appendMember and appendIntKV assume, and that every member
// key fits a memberKey.
func TestKeysFit(t *testing.T) {
	keys := []string{AttrCookie, AttrCgroupID, AttrLocalPort, AttrPeerPort}
	for f := range flow.NumFields {
		k := AttrTCPInfo + f.Name()
		keys = append(keys, k)
		if n := 2 + 2 + len(k) + 3; n > keyWidth {
			t.Errorf("%s: %d bytes do not fit keyWidth (%d)", k, n, keyWidth)
		}
	}
	for _, k := range keys {
		if n := 2 + len(k) + 2 + 1 + maxVarintLen; n >= 128 {
			t.Errorf("%s: a KeyValue of %d bytes needs a longer length", k, n)
		}
	}
}

// TestLongestRecord checks maxRecordLen against the longest record flowd
// writes: every member at its longest varint, IPv6 addresses, a state
// record, the longest congestion control and process names the kernel
// allows (15 bytes).
func TestLongestRecord(t *testing.T) {
	r := realisticRecord()
	r.Event, r.State, r.OldState = flow.EventState, flow.StateFinWait1, flow.StateEstablished
	r.Family = 6
	r.LocalAddr = netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
	r.RemoteAddr = r.LocalAddr
	r.Backend, r.CA = "netlink", "abcdefghijklmno"
	r.PID, r.Comm = math.MaxUint32, "abcdefghijklmno"
	r.Cookie, r.CgroupID = math.MaxUint64, math.MaxUint64
	r.Cgroup = strings.Repeat("a", maxCgroupLen)
	for f := range flow.NumFields {
		r.Info.Set(f, math.MaxUint64)
	}
	n := len(newEncoder(Resource{}, nil).appendRecord(nil, &r))
	if n > maxRecordLen {
		t.Errorf("the longest record takes %d bytes, more than maxRecordLen (%d)", n, maxRecordLen)
	}
	t.Logf("longest record: %d bytes", n)
}

func FuzzEncode(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint8(4), []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}, uint8(3), "cubic", uint64(5))
	f.Fuzz(func(t *testing.T, cookie, present uint64, family uint8, laddr, raddr []byte, event uint8, ca string, value uint64) {
		r := flow.Record{Time: time.Unix(0, int64(cookie>>1)), Backend: "ebpf", Event: flow.Event(event%5 + 1),
			Cookie: cookie, Existing: present&1 != 0, Family: family, CA: ca, State: flow.State(event), OldState: flow.State(event / 2)}
		if present&4 != 0 {
			r.Cgroup = ca
		}
		if present&2 != 0 {
			r.PID, r.Comm = uint32(value), ca
		}
		r.LocalAddr, _ = netip.AddrFromSlice(laddr)
		r.RemoteAddr, _ = netip.AddrFromSlice(raddr)
		for f := range flow.NumFields {
			if present&(1<<(uint(f)%64)) != 0 {
				r.Info.Set(f, value<<(uint(f)%7))
			}
		}
		res := Resource{HostName: ca, Version: "v"}
		records := []flow.Record{r, r}
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(reference(res, nil, records))
		if err != nil {
			t.Fatal(err)
		}
		if got := encode(newEncoder(res, nil), records); !bytes.Equal(got, want) {
			t.Errorf("encoded request differs from the reference\n got %x\nwant %x", got, want)
		}
	})
}
