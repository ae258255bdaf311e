package testutil

import (
	"bytes"
	"fmt"
	"iter"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/flowd/flowd/flow"
)

// requests returns the requests the collector wrote to the file at path,
// one JSON line each. A last line without its newline is a request whose
// writing a Kill cut short: the collector had not acknowledged it (the
// file exporter writes a request before the receiver answers), so flowd
// sends it again, and it is left out.
func (c *OTelCollector) requests(t testing.TB, path string) iter.Seq[[]byte] {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		b, err = nil, nil // the file exporter creates it on its first request
	}
	if err != nil {
		t.Fatal(err)
	}
	return func(yield func([]byte) bool) {
		for line := range bytes.Lines(b) {
			if !bytes.HasSuffix(line, []byte("\n")) {
				return
			}
			if !yield(line[:len(line)-1]) {
				return
			}
		}
	}
}

// Records reads the records and resources the collector wrote to all its
// files of logs, in the order it accepted them. It fails the test on a log
// record that is not one of flowd's records as docs/otlp.md describes
// them.
func (c *OTelCollector) Records(t testing.TB) ([]flow.Record, []map[string]string) {
	t.Helper()
	var records []flow.Record
	var resources []map[string]string
	for _, path := range c.Outputs() {
		for line := range c.requests(t, path) {
			var data logspb.LogsData
			if err := protojson.Unmarshal(line, &data); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			for _, rl := range data.ResourceLogs {
				res := map[string]string{}
				for _, kv := range rl.Resource.GetAttributes() {
					res[kv.Key] = kv.Value.GetStringValue()
				}
				resources = append(resources, res)
				for _, sl := range rl.ScopeLogs {
					for _, lr := range sl.LogRecords {
						r, err := recordFromOTLP(lr)
						if err != nil {
							t.Fatalf("%s: %v", path, err)
						}
						records = append(records, r)
					}
				}
			}
		}
	}
	return records, resources
}

// recordFromOTLP is the inverse of the exporter's mapping, written from
// docs/otlp.md: it rejects unknown attributes and attributes of the wrong
// type, so that the comparison with the records sent checks the types too.
func recordFromOTLP(lr *logspb.LogRecord) (flow.Record, error) {
	var r flow.Record
	r.Time = time.Unix(0, int64(lr.TimeUnixNano)).UTC()
	name, ok := strings.CutPrefix(lr.EventName, "flowd.")
	if r.Event, ok = flow.ParseEvent(name); !ok {
		return r, fmt.Errorf("event name %q", lr.EventName)
	}
	for _, kv := range lr.Attributes {
		var (
			s, isStr = kv.Value.Value.(*commonpb.AnyValue_StringValue)
			n, isInt = kv.Value.Value.(*commonpb.AnyValue_IntValue)
			err      error
		)
		wantStr := func() string {
			if !isStr {
				err = fmt.Errorf("%s is not a string: %v", kv.Key, kv.Value)
				return ""
			}
			return s.StringValue
		}
		wantInt := func() uint64 {
			if !isInt {
				err = fmt.Errorf("%s is not an int: %v", kv.Key, kv.Value)
				return 0
			}
			return uint64(n.IntValue)
		}
		state := func() flow.State {
			st, ok := flow.ParseState(wantStr())
			if !ok && err == nil {
				err = fmt.Errorf("%s: unknown state %v", kv.Key, kv.Value)
			}
			return st
		}
		switch kv.Key {
		case "flowd.backend":
			r.Backend = wantStr()
		case "flowd.cookie":
			r.Cookie = wantInt()
		case "flowd.existing":
			b, ok := kv.Value.Value.(*commonpb.AnyValue_BoolValue)
			if !ok || !b.BoolValue {
				err = fmt.Errorf("flowd.existing is not true: %v", kv.Value)
			}
			r.Existing = true
		case "flowd.cgroup_id":
			r.CgroupID = wantInt()
		case "flowd.cgroup":
			r.Cgroup = wantStr()
		case "network.type":
			switch wantStr() {
			case "ipv4":
				r.Family = 4
			case "ipv6":
				r.Family = 6
			default:
				err = fmt.Errorf("network.type %v", kv.Value)
			}
		case "network.local.address":
			r.LocalAddr, err = netip.ParseAddr(wantStr())
		case "network.local.port":
			r.LocalPort = uint16(wantInt())
		case "network.peer.address":
			r.RemoteAddr, err = netip.ParseAddr(wantStr())
		case "network.peer.port":
			r.RemotePort = uint16(wantInt())
		case "flowd.state":
			r.State = state()
		case "flowd.old_state":
			r.OldState = state()
		case "flowd.ca":
			r.CA = wantStr()
		case "process.pid":
			r.PID = uint32(wantInt())
		case "flowd.comm":
			r.Comm = wantStr()
		default:
			member, ok := strings.CutPrefix(kv.Key, "tcp_info.")
			f, known := flow.FieldByName(member)
			if !ok || !known {
				return r, fmt.Errorf("unknown attribute %s", kv.Key)
			}
			if r.Info.Has(f) {
				return r, fmt.Errorf("attribute %s twice", kv.Key)
			}
			r.Info.Set(f, wantInt())
		}
		if err != nil {
			return r, err
		}
	}
	return r, nil
}

// RecordKey identifies a record among those sent.
type RecordKey struct {
	backend string
	cookie  uint64
	time    int64
	event   flow.Event
}

// KeyOf returns the key of r.
func KeyOf(r *flow.Record) RecordKey {
	return RecordKey{r.Backend, r.Cookie, r.Time.UnixNano(), r.Event}
}

// CompareRecords checks that got holds every record of want exactly once
// or (duplicates allowed) at least once, and nothing else. It returns the
// number of duplicates.
func CompareRecords(t testing.TB, got, want []flow.Record, duplicatesAllowed bool) int {
	t.Helper()
	index := map[RecordKey]*flow.Record{}
	for i := range want {
		index[KeyOf(&want[i])] = &want[i]
	}
	seen := map[RecordKey]int{}
	dups := 0
	for i := range got {
		k := KeyOf(&got[i])
		w, ok := index[k]
		if !ok {
			t.Fatalf("received a record that was not sent: %+v", got[i])
		}
		if !w.Time.Equal(got[i].Time) {
			t.Fatalf("time: got %v, sent %v", got[i].Time, w.Time)
		}
		g := got[i]
		g.Time = w.Time // the same instant; time.Time's location may differ
		if !reflect.DeepEqual(&g, w) {
			t.Fatalf("record differs:\n got %+v\nsent %+v", g, *w)
		}
		if seen[k]++; seen[k] > 1 {
			dups++
		}
	}
	if dups > 0 && !duplicatesAllowed {
		t.Errorf("%d records received twice", dups)
	}
	if len(seen) != len(want) {
		t.Errorf("received %d of the %d records sent", len(seen), len(want))
	}
	return dups
}

// MetricsData returns the requests of metrics the collector wrote to its
// files, in the order it accepted them.
func (c *OTelCollector) MetricsData(t testing.TB) []*metricspb.MetricsData {
	t.Helper()
	var requests []*metricspb.MetricsData
	for _, path := range c.MetricsOutputs() {
		for line := range c.requests(t, path) {
			data := &metricspb.MetricsData{}
			if err := protojson.Unmarshal(line, data); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			requests = append(requests, data)
		}
	}
	return requests
}

// Sums returns the last value the collector received of every series of
// the integer Sums in its files of metrics, by metric name and attributes:
// `flowd.tcp.bytes_acked{backend="ebpf",cgroup="a"}`, the attributes in
// the order of their keys.
func (c *OTelCollector) Sums(t testing.TB) map[string]int64 {
	t.Helper()
	type point struct {
		time  uint64
		value int64
	}
	last := map[string]point{}
	for _, data := range c.MetricsData(t) {
		for _, rm := range data.ResourceMetrics {
			for _, sm := range rm.ScopeMetrics {
				for _, m := range sm.Metrics {
					for _, dp := range m.GetSum().GetDataPoints() {
						var attrs []string
						for _, kv := range dp.Attributes {
							attrs = append(attrs, fmt.Sprintf("%s=%q", kv.Key, kv.Value.GetStringValue()))
						}
						slices.Sort(attrs)
						key := m.Name + "{" + strings.Join(attrs, ",") + "}"
						if p, ok := last[key]; !ok || p.time < dp.TimeUnixNano {
							last[key] = point{dp.TimeUnixNano, dp.GetAsInt()}
						}
					}
				}
			}
		}
	}
	sums := make(map[string]int64, len(last))
	for k, p := range last {
		sums[k] = p.value
	}
	return sums
}
