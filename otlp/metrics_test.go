package otlp_test

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/otlptranslator"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/metrics"
	"github.com/flowd/flowd/metrics/tcpstats"
	"github.com/flowd/flowd/otlp"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

type cgroupNames map[uint64]string

func (n cgroupNames) Path(id uint64) (string, bool) { p, ok := n[id]; return p, ok }

// tcpRecords returns the records of n flows of two backends in four
// cgroups (cgroup 4 has no path) to three remote ports: an open record,
// three samples, and a close record for two flows in three, from start on.
func tcpRecords(n int, start time.Time) []flow.Record {
	var records []flow.Record
	for c := range uint64(n) {
		r := flow.Record{Backend: []string{"ebpf", "netlink"}[c/4%2], Cookie: 100 + c, CgroupID: 1 + c%4, Family: 4,
			LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: 40000 + uint16(c),
			RemoteAddr: netip.MustParseAddr("192.0.2.7"), RemotePort: []uint16{443, 80, 8080}[c%3], State: flow.StateEstablished}
		for k := range uint64(5) {
			r.Time = start.Add(time.Duration(k)*time.Second + time.Duration(c)*time.Millisecond)
			switch k {
			case 0:
				r.Event = flow.EventOpen
			case 4:
				if c%3 == 2 {
					continue
				}
				r.Event, r.State = flow.EventClose, flow.StateClose
			default:
				r.Event = flow.EventSample
			}
			r.Info = flow.TCPInfo{}
			r.Info.Set(flow.FieldBytesAcked, (c+1)*k*100_000)
			r.Info.Set(flow.FieldBytesReceived, (c+1)*k*3_000)
			r.Info.Set(flow.FieldBytesRetrans, c*k*1_400)
			r.Info.Set(flow.FieldTotalRetrans, c*k)
			r.Info.Set(flow.FieldRTT, 20+c*k*300)
			r.Info.Set(flow.FieldMinRTT, 15+c*40)
			r.Info.Set(flow.FieldDeliveryRate, (c+1)*k*2_500_000)
			records = append(records, r)
		}
	}
	slices.SortStableFunc(records, func(a, b flow.Record) int { return a.Time.Compare(b.Time) })
	return records
}

// TestMetricsArrive pushes the TCP metrics of an aggregator to a real
// collector over each protocol, while records come and at Close, and
// checks that the collector holds the same metrics flowd's Prometheus
// endpoint serves of the same aggregator: the names, by the rules of
// OpenTelemetry's Prometheus exporters, the types, labels and values,
// with the cardinality bound (other) and the second aggregation.
func TestMetricsArrive(t *testing.T) {
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	names := cgroupNames{1: "system.slice/a.service", 2: "system.slice/b.service", 3: "user.slice"}
	for _, p := range []otlpconfig.Protocol{otlpconfig.ProtocolGRPC, otlpconfig.ProtocolHTTP} {
		t.Run(strings.ReplaceAll(string(p), "/", "-"), func(t *testing.T) {
			agg := tcpstats.New(tcpstats.Config{Names: names, MaxCgroups: 2, By: tcpstats.ByRemotePort, MaxBy: 10})
			cfg := baseConfig(endpoint(col, p), p)
			cfg.MetricsInterval = time.Second
			if p == otlpconfig.ProtocolHTTP {
				cfg.Compression = otlpconfig.CompressionGzip
			}
			host := "host-" + string(p)
			e, err := otlp.New(cfg, otlp.Options{Resource: otlp.Resource{HostName: host, Version: "test"}, TCP: agg, TCPBy: tcpstats.ByRemotePort})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { e.Close() })
			records := tcpRecords(24, time.Now().Add(-time.Minute))
			half := len(records) / 2
			for i := range records[:half] {
				agg.Write(&records[i])
			}
			testutil.WaitFor(t, "a push of the metrics", 10*time.Second, func() bool { return e.Stats().Metrics.Exported > 0 })
			for i := range records[half:] {
				agg.Write(&records[half+i])
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			s := e.Stats()
			if s.Metrics.Requests < 2 || s.Metrics.Failures != 0 || s.Metrics.Lost != 0 {
				t.Errorf("metrics stats %+v: want two pushes or more, none failed", s.Metrics)
			}

			pushed, pushes := lastPushed(t, col, host)
			if pushes < 2 {
				t.Errorf("%d requests of metrics in the collector, want the periodic one and the last", pushes)
			}
			compareWithPrometheus(t, pushed, scrape(t, agg, tcpstats.ByRemotePort))
			for _, want := range []string{`flowd_tcp_bytes_acked_total{backend="ebpf",cgroup="other"}`,
				`flowd_tcp_bytes_acked_total{backend="netlink",cgroup="unknown"}`,
				`flowd_tcp_remote_bytes_acked_total{backend="ebpf",remote_port="8080"}`,
				`flowd_tcp_srtt_seconds{backend="ebpf",cgroup="system.slice/a.service"}`, `flowd_tcp_records_ignored_total{}`} {
				if _, ok := pushed[want]; !ok {
					t.Errorf("no %s pushed", want)
				}
			}
			if got := s.Metrics.Exported; got < uint64(len(pushed)) {
				t.Errorf("%d data points exported, want at least the %d of the last push", got, len(pushed))
			}
		})
	}
}

// TestMetricsManyCgroups pushes the metrics of 3,000 cgroups: ~5.6 MB of
// protobuf, more than the 4 MiB a collector's gRPC receiver takes in one
// request by default. The push is split into requests it takes, and every
// series arrives.
func TestMetricsManyCgroups(t *testing.T) {
	const cgroups = 3000
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	names := cgroupNames{}
	agg := tcpstats.New(tcpstats.Config{Names: names, MaxCgroups: cgroups})
	start := time.Now().Add(-time.Minute)
	for c := range uint64(cgroups) {
		names[c+1] = fmt.Sprintf("system.slice/service-%d.service", c)
		r := flow.Record{Time: start, Backend: "ebpf", Event: flow.EventOpen, Cookie: 100 + c, CgroupID: c + 1, Family: 4,
			LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: 40000, RemoteAddr: netip.MustParseAddr("192.0.2.7"), RemotePort: 443,
			State: flow.StateEstablished}
		agg.Write(&r)
		r.Time, r.Event = start.Add(time.Second), flow.EventSample
		r.Info.Set(flow.FieldBytesAcked, (c+1)*100_000)
		r.Info.Set(flow.FieldRTT, 20+c)
		r.Info.Set(flow.FieldMinRTT, 15+c)
		r.Info.Set(flow.FieldDeliveryRate, (c+1)*2_500_000)
		agg.Write(&r)
	}
	cfg := baseConfig(col.GRPC, otlpconfig.ProtocolGRPC)
	cfg.MetricsInterval = time.Hour // one push: Close's
	e, err := otlp.New(cfg, otlp.Options{Resource: otlp.Resource{HostName: "many", Version: "test"}, TCP: agg})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	s := e.Stats().Metrics
	if s.Lost != 0 || s.Failures != 0 || s.Requests < 2 {
		t.Errorf("metrics stats %+v: want a push of two requests or more, none failed", s)
	}
	pushed, requests := lastPushed(t, col, "many")
	compareWithPrometheus(t, pushed, scrape(t, agg, tcpstats.ByNone))
	if uint64(len(pushed)) != s.Exported {
		t.Errorf("%d data points in the collector, %d exported", len(pushed), s.Exported)
	}
	t.Logf("%d data points in %d requests", len(pushed), requests)
}

// point is a data point as the collector wrote it, under the Prometheus
// name of its metric.
type point struct {
	typ    dto.MetricType
	labels string // name="value",... sorted
	time   uint64
	start  uint64
	value  float64
	bounds []float64
	counts []uint64 // per bucket, not cumulative
	count  uint64
	sum    float64
}

// lastPushed returns the last data point of every series the collector
// received from host, by Prometheus name and labels, and the requests
// that carried them.
func lastPushed(t *testing.T, col *testutil.OTelCollector, host string) (map[string]point, int) {
	t.Helper()
	namer := otlptranslator.MetricNamer{WithMetricSuffixes: true}
	points := map[string]point{}
	requests := 0
	for _, data := range col.MetricsData(t) {
		for _, rm := range data.ResourceMetrics {
			res := map[string]string{}
			for _, kv := range rm.Resource.GetAttributes() {
				res[kv.Key] = kv.Value.GetStringValue()
			}
			if res["host.name"] != host {
				continue
			}
			requests++
			if res["service.name"] != "flowd" || res["service.version"] != "test" {
				t.Errorf("resource %v", res)
			}
			for _, sm := range rm.ScopeMetrics {
				if sm.Scope.GetName() != "flowd" {
					t.Errorf("scope %v", sm.Scope)
				}
				for _, m := range sm.Metrics {
					addPoints(t, points, &namer, m)
				}
			}
		}
	}
	return points, requests
}

func addPoints(t *testing.T, points map[string]point, namer *otlptranslator.MetricNamer, m *metricspb.Metric) {
	t.Helper()
	add := func(typ otlptranslator.MetricType, p point, attrs map[string]string) {
		name, err := namer.Build(otlptranslator.Metric{Name: m.Name, Unit: m.Unit, Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		var labels []string
		for k, v := range attrs {
			labels = append(labels, fmt.Sprintf("%s=%q", k, v))
		}
		slices.Sort(labels)
		p.labels = strings.Join(labels, ",")
		key := name + "{" + p.labels + "}"
		if p.start == 0 || p.start >= p.time {
			t.Errorf("%s: start %d, time %d", key, p.start, p.time)
		}
		if old, ok := points[key]; !ok || old.time < p.time {
			points[key] = p
		}
	}
	attrs := func(kvs []*commonpb.KeyValue) map[string]string {
		a := map[string]string{}
		for _, kv := range kvs {
			a[kv.Key] = kv.Value.GetStringValue()
		}
		return a
	}
	switch d := m.Data.(type) {
	case *metricspb.Metric_Sum:
		if d.Sum.AggregationTemporality != metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
			t.Errorf("%s: %s", m.Name, d.Sum.AggregationTemporality)
		}
		typ, dtyp := otlptranslator.MetricType(otlptranslator.MetricTypeNonMonotonicCounter), dto.MetricType_GAUGE
		if d.Sum.IsMonotonic {
			typ, dtyp = otlptranslator.MetricTypeMonotonicCounter, dto.MetricType_COUNTER
		}
		for _, dp := range d.Sum.DataPoints {
			if _, ok := dp.Value.(*metricspb.NumberDataPoint_AsInt); !ok {
				t.Errorf("%s: %v is not an integer", m.Name, dp.Value)
			}
			add(typ, point{typ: dtyp, time: dp.TimeUnixNano, start: dp.StartTimeUnixNano, value: float64(dp.GetAsInt())}, attrs(dp.Attributes))
		}
	case *metricspb.Metric_Histogram:
		for _, dp := range d.Histogram.DataPoints {
			add(otlptranslator.MetricTypeHistogram, point{typ: dto.MetricType_HISTOGRAM, time: dp.TimeUnixNano, start: dp.StartTimeUnixNano,
				bounds: dp.ExplicitBounds, counts: dp.BucketCounts, count: dp.Count, sum: dp.GetSum()}, attrs(dp.Attributes))
		}
	default:
		t.Errorf("%s: unexpected %T", m.Name, m.Data)
	}
}

// scrape returns what flowd's Prometheus endpoint serves of agg's TCP
// metrics.
func scrape(t *testing.T, agg *tcpstats.Aggregator, by tcpstats.By) map[string]*dto.MetricFamily {
	t.Helper()
	m, err := metrics.New("test")
	if err != nil {
		t.Fatal(err)
	}
	m.RegisterTCP(agg, by)
	log, _ := logtest.NewNullLogger()
	srv, err := m.Listen("127.0.0.1:0", metrics.ServerOptions{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(t.Context())
	resp, err := http.Get("http://" + srv.Addr().String() + metrics.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for name := range families {
		if !strings.HasPrefix(name, "flowd_tcp_") {
			delete(families, name)
		}
	}
	return families
}

// compareWithPrometheus checks that pushed holds exactly the series of
// families, with their values.
func compareWithPrometheus(t *testing.T, pushed map[string]point, families map[string]*dto.MetricFamily) {
	t.Helper()
	served := 0
	for name, f := range families {
		for _, s := range f.Metric {
			var labels []string
			for _, l := range s.Label {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(labels)
			key := name + "{" + strings.Join(labels, ",") + "}"
			served++
			p, ok := pushed[key]
			if !ok {
				t.Errorf("%s is served but was not pushed", key)
				continue
			}
			if p.typ != f.GetType() {
				t.Errorf("%s: pushed as a %s, served as a %s", key, p.typ, f.GetType())
				continue
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				if p.value != s.Counter.GetValue() {
					t.Errorf("%s: pushed %v, served %v", key, p.value, s.Counter.GetValue())
				}
			case dto.MetricType_GAUGE:
				if p.value != s.Gauge.GetValue() {
					t.Errorf("%s: pushed %v, served %v", key, p.value, s.Gauge.GetValue())
				}
			case dto.MetricType_HISTOGRAM:
				h := s.Histogram
				var bounds []float64
				var cumulative []uint64
				n := uint64(0)
				for i, c := range p.counts {
					n += c
					bound := math.Inf(1)
					if i < len(p.bounds) {
						bound = p.bounds[i]
					}
					bounds, cumulative = append(bounds, bound), append(cumulative, n)
				}
				var servedBounds []float64
				var servedCounts []uint64
				for _, b := range h.Bucket {
					servedBounds, servedCounts = append(servedBounds, b.GetUpperBound()), append(servedCounts, b.GetCumulativeCount())
				}
				if !slices.Equal(bounds, servedBounds) || !slices.Equal(cumulative, servedCounts) || p.count != h.GetSampleCount() || p.sum != h.GetSampleSum() {
					t.Errorf("%s: pushed bounds %v counts %v (count %d, sum %v), served %v %v (%d, %v)", key,
						bounds, cumulative, p.count, p.sum, servedBounds, servedCounts, h.GetSampleCount(), h.GetSampleSum())
				}
			}
		}
	}
	if served != len(pushed) {
		var extra []string
		for key := range pushed {
			name, _, _ := strings.Cut(key, "{")
			if families[name] == nil {
				extra = append(extra, key)
			}
		}
		t.Errorf("%d series pushed, %d served; pushed only: %v", len(pushed), served, extra)
	}
	t.Logf("%d series pushed and served alike", served)
}

// TestMetricsCollectorDown pushes the metrics to a collector that is down:
// each push is retried until the next is due, then given up, counted and
// logged; once the collector is back, the next push carries the values
// of everything, so that the collector ends with what flowd serves.
func TestMetricsCollectorDown(t *testing.T) {
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	col.Kill()
	agg := tcpstats.New(tcpstats.Config{Names: cgroupNames{1: "a", 2: "b", 3: "c"}, MaxCgroups: 10})
	cfg := baseConfig(col.GRPC, otlpconfig.ProtocolGRPC)
	cfg.MetricsInterval = time.Second
	log, hook := logtest.NewNullLogger()
	e, err := otlp.New(cfg, otlp.Options{Resource: otlp.Resource{HostName: "down", Version: "test"}, TCP: agg,
		Log: log, LogInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	records := tcpRecords(12, time.Now().Add(-time.Minute))
	for i := range records {
		agg.Write(&records[i])
	}
	testutil.WaitFor(t, "a push given up", 10*time.Second, func() bool { return e.Stats().Metrics.Lost > 0 })
	if s := e.Stats().Metrics; s.Failures < 2 || s.Exported != 0 {
		t.Errorf("stats %+v: want a push retried, none exported", s)
	}
	logged := false
	for _, entry := range hook.AllEntries() {
		logged = logged || entry.Level == logrus.WarnLevel && entry.Data["failed_metric_pushes"] != nil && entry.Data[logrus.ErrorKey] != nil
	}
	if !logged {
		t.Error("no warning about the failed pushes, with the error")
	}

	col.Start()
	testutil.WaitFor(t, "a push to the collector back", 10*time.Second, func() bool { return e.Stats().Metrics.Exported > 0 })
	pushed, _ := lastPushed(t, col, "down")
	compareWithPrometheus(t, pushed, scrape(t, agg, tcpstats.ByNone))
}

// TestMetricsPushCutByClose closes the exporter while a periodic push of
// the metrics is in flight: Close's own push replaces it, so that none is
// counted lost and a clean stop logs no warning.
func TestMetricsPushCutByClose(t *testing.T) {
	inFlight := make(chan struct{})
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if requests.Add(1) == 1 {
			close(inFlight)
			<-r.Context().Done() // the periodic push, until Close cuts it short
		}
	}))
	defer srv.Close()
	agg := tcpstats.New(tcpstats.Config{Names: cgroupNames{1: "a", 2: "b"}, MaxCgroups: 10})
	records := tcpRecords(8, time.Now().Add(-time.Minute))
	for i := range records {
		agg.Write(&records[i])
	}
	cfg := otlpconfig.Default()
	cfg.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	cfg.Protocol = otlpconfig.ProtocolHTTP
	cfg.MetricsInterval = time.Second
	log, hook := logtest.NewNullLogger()
	e, err := otlp.New(cfg, otlp.Options{TCP: agg, Log: log, LogInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-inFlight:
	case <-time.After(10 * time.Second):
		t.Fatal("no push of the metrics")
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if s := e.Stats().Metrics; s.Lost != 0 || s.Failures != 0 || s.Exported == 0 {
		t.Errorf("metrics stats %+v: want Close's push exported, none lost or failed", s)
	}
	for _, entry := range hook.AllEntries() {
		if entry.Level <= logrus.WarnLevel {
			line, _ := entry.String()
			t.Errorf("logged on a clean stop: %s", line)
		}
	}
}
