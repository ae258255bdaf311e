package otlp_test

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/otlp"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

// testRecords returns n records of every kind: both families, every
// event, sparse and full tcp_info, values past 2^63.
func testRecords(n int) []flow.Record {
	base := time.Unix(1_795_000_000, 0)
	records := make([]flow.Record, n)
	for i := range records {
		r := flow.Record{
			Time:       base.Add(time.Duration(i) * time.Microsecond),
			Backend:    []string{"ebpf", "netlink"}[i%2],
			Event:      flow.Event(i%4 + 1),
			Cookie:     uint64(1000 + i%97),
			CgroupID:   uint64(5000 + i%3),
			Cgroup:     []string{"system.slice/a.service", "", "user.slice/ü"}[i%3],
			Family:     4,
			LocalAddr:  netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}),
			RemoteAddr: netip.MustParseAddr("192.0.2.1"),
			LocalPort:  uint16(40000 + i%1000),
			RemotePort: 443,
			State:      flow.StateEstablished,
			CA:         "cubic",
		}
		if i%5 == 0 {
			r.Family = 6
			r.LocalAddr = netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i))
			r.RemoteAddr = netip.MustParseAddr("::ffff:192.0.2.7")
			r.CA = ""
		}
		if r.Event == flow.EventState {
			r.State, r.OldState = flow.StateFinWait1, flow.StateEstablished
		}
		if r.Event == flow.EventClose && i%2 == 0 {
			r.State, r.OldState = flow.StateClose, flow.StateLastAck
		}
		if i%4 < 2 {
			r.PID, r.Comm = uint32(30000+i), "curl"
		}
		r.Existing = r.Event == flow.EventOpen && i%3 == 0
		for f := range flow.NumFields {
			if i%3 == 0 && f%2 == 1 {
				continue // absent
			}
			r.Info.Set(f, uint64(i)*uint64(f+1))
		}
		if i%7 == 0 {
			r.Info.Set(flow.FieldMaxPacingRate, math.MaxUint64)
		}
		records[i] = r
	}
	return records
}

// baseConfig is the configuration of an exporter to col's receiver for
// protocol, with retries that come quickly, and a shutdown deadline that
// a loaded machine (or -race) does not reach: Close returns as soon as the
// queue is sent.
func baseConfig(endpoint string, protocol otlpconfig.Protocol) otlpconfig.Config {
	cfg := otlpconfig.Default()
	cfg.Endpoint = endpoint
	cfg.Protocol = protocol
	cfg.ExportInterval = 50 * time.Millisecond
	cfg.Retry.InitialInterval = 50 * time.Millisecond
	cfg.Retry.MaxInterval = 200 * time.Millisecond
	cfg.ShutdownTimeout = time.Minute
	return cfg
}

func endpoint(col *testutil.OTelCollector, p otlpconfig.Protocol) string {
	if p == otlpconfig.ProtocolHTTP {
		return col.HTTP
	}
	return col.GRPC
}

func newExporter(t *testing.T, cfg otlpconfig.Config, log logrus.FieldLogger) *otlp.Exporter {
	t.Helper()
	if log == nil {
		l, _ := logtest.NewNullLogger()
		log = l
	}
	e, err := otlp.New(cfg, otlp.Options{
		Resource:    otlp.Resource{HostName: "test-host", Version: "v0.0.0-test"},
		Log:         log,
		LogInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func write(t *testing.T, e *otlp.Exporter, records []flow.Record) {
	t.Helper()
	for i := range records {
		if err := e.Write(&records[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// receivedKeys returns the keys of the records col received, each once.
func receivedKeys(t *testing.T, col *testutil.OTelCollector) map[testutil.RecordKey]bool {
	t.Helper()
	got, _ := col.Records(t)
	keys := map[testutil.RecordKey]bool{}
	for i := range got {
		keys[testutil.KeyOf(&got[i])] = true
	}
	return keys
}

// TestCollectorConfig checks configs/otelcol.yaml with the collector's
// own validation.
func TestCollectorConfig(t *testing.T) {
	out, err := exec.Command(testutil.OTelCollectorBinary(t), "validate", "--config", "../configs/otelcol.yaml").CombinedOutput()
	if err != nil {
		t.Fatalf("configs/otelcol.yaml: %v\n%s", err, out)
	}
}

// TestCollectorReceivesRecords sends records of every kind to a real
// collector over each protocol and compression and checks that it wrote
// exactly them, with flowd's resource.
func TestCollectorReceivesRecords(t *testing.T) {
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	records := testRecords(3000)
	var sent []flow.Record
	for _, p := range []otlpconfig.Protocol{otlpconfig.ProtocolGRPC, otlpconfig.ProtocolHTTP} {
		for _, c := range []otlpconfig.Compression{otlpconfig.CompressionNone, otlpconfig.CompressionGzip} {
			// each combination sends records of its own backend
			batch := slices.Clone(records)
			for i := range batch {
				batch[i].Backend = fmt.Sprintf("%s-%s-%d", p, c, i%2)
			}
			t.Run(fmt.Sprintf("%s/%s", strings.ReplaceAll(string(p), "/", "-"), c), func(t *testing.T) {
				cfg := baseConfig(endpoint(col, p), p)
				cfg.Compression = c
				cfg.BatchSize = 100 // many requests, the last one partial
				e := newExporter(t, cfg, nil)
				write(t, e, batch)
				if err := e.Close(); err != nil {
					t.Fatal(err)
				}
				s := e.Stats()
				if s.Exported != uint64(len(batch)) || s.Dropped.Total() != 0 || s.Queued != 0 {
					t.Errorf("stats after Close: %+v, want %d exported and none dropped or queued", s, len(batch))
				}
			})
			sent = append(sent, batch...)
		}
	}
	got, resources := col.Records(t)
	testutil.CompareRecords(t, got, sent, false)
	for _, res := range resources {
		want := map[string]string{"service.name": "flowd", "host.name": "test-host", "service.version": "v0.0.0-test"}
		if !reflect.DeepEqual(res, want) {
			t.Fatalf("resource attributes %v, want %v", res, want)
		}
	}
}

// TestCollectorRestart kills the collector while records keep coming and
// starts it again: the queue holds them meanwhile, and every record
// arrives (some maybe twice, as OTLP's at-least-once delivery allows,
// when the collector died between writing a request and answering it).
func TestCollectorRestart(t *testing.T) {
	for _, p := range []otlpconfig.Protocol{otlpconfig.ProtocolGRPC, otlpconfig.ProtocolHTTP} {
		t.Run(strings.ReplaceAll(string(p), "/", "-"), func(t *testing.T) {
			col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
			cfg := baseConfig(endpoint(col, p), p)
			cfg.BatchSize = 200
			e := newExporter(t, cfg, nil)
			records := testRecords(20000)
			third := len(records) / 3

			write(t, e, records[:third])
			testutil.WaitFor(t, "the first records exported", 10*time.Second, func() bool { return e.Stats().Exported > 0 })
			col.Kill()
			write(t, e, records[third:2*third])
			failures := e.Stats().Failures
			testutil.WaitFor(t, "a failed request", 10*time.Second, func() bool { return e.Stats().Failures > failures })
			col.Start()
			write(t, e, records[2*third:])
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}

			s := e.Stats()
			if s.Dropped.Total() != 0 {
				t.Fatalf("dropped %+v with a queue of %d records", s.Dropped, cfg.QueueSize)
			}
			got, _ := col.Records(t)
			dups := testutil.CompareRecords(t, got, records, true)
			t.Logf("%d records, %d received twice, %d requests of which %d failed", len(records), dups, s.Requests, s.Failures)
		})
	}
}

// TestCollectorLongOutage keeps the collector down for 11 seconds: with
// gRPC's own reconnect backoff (from 1 s, 1.6 times longer after each
// failure, up to 2 minutes) the connection would next be tried seconds
// after the collector is back, while calls fail at once meanwhile, and
// the records written then would run out of retries. Reconnecting at the
// pace of the retries, what is lost is only what the outage outlasted,
// as the drop counter says, and every record written once the collector
// is back arrives. (HTTP connects anew for each request: gRPC only.)
func TestCollectorLongOutage(t *testing.T) {
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	cfg := baseConfig(col.GRPC, otlpconfig.ProtocolGRPC)
	cfg.BatchSize = 100
	cfg.Retry.MaxElapsedTime = 2 * time.Second
	e := newExporter(t, cfg, nil)
	records := testRecords(3000)
	before, during, after := records[:1000], records[1000:2000], records[2000:]

	write(t, e, before)
	testutil.WaitFor(t, "the first records exported", 10*time.Second, func() bool { return e.Stats().Exported == uint64(len(before)) })
	col.Kill()
	write(t, e, during[:100])
	testutil.WaitFor(t, "a failed request", 10*time.Second, func() bool { return e.Stats().Failures > 0 })
	// gRPC's default backoff would try at about 1, 2.6, 5.2, 9.3 and
	// 15.8 s from here: the collector is back between the last two.
	for i := 1; i < 10; i++ {
		time.Sleep(time.Second)
		write(t, e, during[i*100:(i+1)*100])
	}
	time.Sleep(2 * time.Second)
	col.Start()
	write(t, e, after)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	s := e.Stats()
	received := receivedKeys(t, col)
	lost, lostAfter := 0, 0
	for i := range records {
		if !received[testutil.KeyOf(&records[i])] {
			lost++
			if i >= len(before)+len(during) {
				lostAfter++
			}
		}
	}
	if uint64(lost) != s.Dropped.Total() || s.Dropped.Total() != s.Dropped.ExportFailed {
		t.Errorf("lost %d records, the drop counter says %+v", lost, s.Dropped)
	}
	if lostAfter > 0 {
		t.Errorf("%d of the %d records written once the collector was back were lost (%d requests, %d failed)", lostAfter, len(after), s.Requests, s.Failures)
	}
	t.Logf("%d records lost to the outage, %d requests of which %d failed", lost, s.Requests, s.Failures)
}

// TestQueueOverflow keeps the collector down while more records come than
// the queue holds: what is lost is exactly what the drop counter says.
func TestQueueOverflow(t *testing.T) {
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	cfg := baseConfig(col.GRPC, otlpconfig.ProtocolGRPC)
	cfg.BatchSize, cfg.QueueSize = 100, 1000
	log, hook := logtest.NewNullLogger()
	e := newExporter(t, cfg, log)
	records := testRecords(5000)

	write(t, e, records[:500])
	testutil.WaitFor(t, "the first records exported", 10*time.Second, func() bool { return e.Stats().Exported == 500 })
	col.Kill()
	write(t, e, records[500:])
	if s := e.Stats(); s.Dropped.QueueFull == 0 || s.Queued > cfg.QueueSize {
		t.Fatalf("stats with the collector down: %+v; want drops and at most %d queued", s, cfg.QueueSize)
	}
	testutil.WaitFor(t, "a warning about drops", 10*time.Second, func() bool {
		for _, entry := range hook.AllEntries() {
			if entry.Level == logrus.WarnLevel && entry.Data["queue_full"].(uint64) > 0 {
				return true
			}
		}
		return false
	})
	col.Start()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	s := e.Stats()
	lost := uint64(len(records) - len(receivedKeys(t, col)))
	if lost != s.Dropped.Total() || lost == 0 {
		t.Errorf("lost %d records, the drop counter says %d (%+v)", lost, s.Dropped.Total(), s.Dropped)
	}
	if s.Dropped.Total() != s.Dropped.QueueFull {
		t.Errorf("drops other than a full queue: %+v", s.Dropped)
	}
}

// TestCollectorNeverUp exports to a port where nothing listens: Write keeps
// taking records (dropping and counting them once the queue is full),
// the problem is logged once per interval, and Close gives up at its
// deadline with everything counted.
func TestCollectorNeverUp(t *testing.T) {
	for _, p := range []otlpconfig.Protocol{otlpconfig.ProtocolGRPC, otlpconfig.ProtocolHTTP} {
		t.Run(strings.ReplaceAll(string(p), "/", "-"), func(t *testing.T) {
			cfg := baseConfig(testutil.FreeLoopbackAddr(t), p)
			cfg.BatchSize, cfg.QueueSize = 100, 1000
			cfg.ShutdownTimeout = 300 * time.Millisecond
			log, hook := logtest.NewNullLogger()
			e := newExporter(t, cfg, log)
			records := testRecords(5000)

			start := time.Now()
			for i := range 10 { // over about a second, five log intervals
				write(t, e, records[i*500:(i+1)*500])
				time.Sleep(100 * time.Millisecond)
			}
			running := time.Since(start)
			begin := time.Now()
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(begin); took > cfg.ShutdownTimeout+5*time.Second {
				t.Errorf("Close took %s with a shutdown_timeout of %s", took, cfg.ShutdownTimeout)
			}
			if err := e.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
			if err := e.Write(&records[0]); !errors.Is(err, otlp.ErrClosed) {
				t.Errorf("Write after Close: %v, want ErrClosed", err)
			}

			s := e.Stats()
			if s.Exported != 0 || s.Dropped.Total() != uint64(len(records)) || s.Queued != 0 {
				t.Errorf("stats %+v: want all %d records dropped", s, len(records))
			}
			if s.Dropped.QueueFull == 0 || s.Dropped.Shutdown+s.Dropped.ExportFailed == 0 {
				t.Errorf("drops %+v: want some for the full queue and the rest at shutdown", s.Dropped)
			}
			var warnings int
			for _, entry := range hook.AllEntries() {
				if entry.Level == logrus.WarnLevel {
					warnings++
				}
			}
			// one per LogInterval while running, one at Close
			most := int((running+time.Since(begin))/(200*time.Millisecond)) + 2
			if warnings == 0 || warnings > most {
				t.Errorf("%d warnings in %s: want 1 to %d, one per log interval", warnings, running, most)
			}
			last := hook.LastEntry()
			if last == nil || last.Data["dropped_total"] != uint64(len(records)) {
				t.Errorf("the last warning does not count every record dropped: %v", last)
			}
		})
	}
}

// TestEvents: with Options.Events, only the records of those events are
// exported.
func TestEvents(t *testing.T) {
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	e, err := otlp.New(baseConfig(col.GRPC, otlpconfig.ProtocolGRPC), otlp.Options{Events: []flow.Event{flow.EventClose, flow.EventOpen}})
	if err != nil {
		t.Fatal(err)
	}
	records := testRecords(200)
	write(t, e, records)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	var want []flow.Record
	for _, r := range records {
		if r.Event == flow.EventOpen || r.Event == flow.EventClose {
			want = append(want, r)
		}
	}
	got, _ := col.Records(t)
	testutil.CompareRecords(t, got, want, false)
	if s := e.Stats(); s.Exported != uint64(len(want)) || s.Dropped.Total() != 0 {
		t.Errorf("stats %+v: want the %d open and close records exported, none dropped", s, len(want))
	}
}

// TestNewRejectsInvalid checks that New validates and does not start an
// exporter without an endpoint.
func TestNewRejectsInvalid(t *testing.T) {
	c := otlpconfig.Default()
	if _, err := otlp.New(c, otlp.Options{}); err == nil || !strings.Contains(err.Error(), "output.otlp.endpoint") {
		t.Errorf("New without an endpoint: %v", err)
	}
	c.Endpoint, c.Protocol = "127.0.0.1:4317", "udp"
	if _, err := otlp.New(c, otlp.Options{}); err == nil || !strings.Contains(err.Error(), "output.otlp.protocol") {
		t.Errorf("New with a bad protocol: %v", err)
	}
	c.Protocol, c.TLS = otlpconfig.ProtocolGRPC, otlpconfig.TLS{Enabled: true, CAFile: filepath.Join(t.TempDir(), "missing.pem")}
	var ce *otlpconfig.Error
	if _, err := otlp.New(c, otlp.Options{}); !errors.As(err, &ce) || ce.Key != "output.otlp.tls.ca_file" {
		t.Errorf("New with a missing CA file: %v", err)
	}
}
