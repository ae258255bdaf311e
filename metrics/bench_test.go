package metrics

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics/tcpstats"
)

// benchNames is a CgroupNames of n cgroups, ids 1 to n.
type benchNames int

func (n benchNames) Path(id uint64) (string, bool) {
	if id == 0 || id > uint64(n) {
		return "", false
	}
	return fmt.Sprintf("system.slice/unit-%d.service", id), true
}

// sampleStream returns the records of flows flows spread over cgroups
// cgroups: an open record each, then samples whose counters grow.
func sampleStream(flows, cgroups int) (opens, samples []flow.Record) {
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i := range flows {
		r := flow.Record{
			Time: base, Backend: flow.BackendEBPF, Event: flow.EventOpen, Cookie: uint64(i + 1), CgroupID: uint64(i%cgroups + 1),
			Family: 4, LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: uint16(10000 + i),
			RemoteAddr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), RemotePort: 443, State: flow.StateEstablished, CA: "cubic",
		}
		for f := range flow.NumFields {
			r.Info.Set(f, uint64(i))
		}
		r.Info.Set(flow.FieldMinRTT, 40)
		opens = append(opens, r)
		r.Event = flow.EventSample
		samples = append(samples, r)
	}
	return opens, samples
}

// BenchmarkMetricsPath is what the metrics add to the daemon for each
// record: the counting sink and the TCP statistics, for samples of many
// flows in many cgroups, one after the other (the output itself
// discards).
func BenchmarkMetricsPath(b *testing.B) {
	for _, tc := range []struct {
		name           string
		flows, cgroups int
		cfg            tcpstats.Config
	}{
		{"flows=1k/cgroups=100", 1000, 100, tcpstats.Config{MaxCgroups: 1000}},
		{"flows=10k/cgroups=1k", 10_000, 1000, tcpstats.Config{MaxCgroups: 1000}},
		{"flows=10k/cgroups=1k/by+per_flow", 10_000, 1000,
			tcpstats.Config{MaxCgroups: 1000, By: tcpstats.ByRemotePrefix, IPv4Bits: 24, IPv6Bits: 64, MaxBy: 100, TopFlows: 100}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m, err := New("bench")
			if err != nil {
				b.Fatal(err)
			}
			tc.cfg.Names = benchNames(tc.cgroups)
			agg := tcpstats.New(tc.cfg)
			s := m.Sink(fanOut{flow.SinkFunc(func(*flow.Record) error { return nil }), agg})
			opens, samples := sampleStream(tc.flows, tc.cgroups)
			for i := range opens {
				if err := s.Write(&opens[i]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			cpu := cpuTime(b)
			// The backends decode every record into one flow.Record: it
			// is in the cache, the flows' and series' state is not.
			r := samples[0]
			i := 0
			for b.Loop() {
				next := &samples[i%len(samples)]
				r.Cookie, r.CgroupID, r.RemoteAddr = next.Cookie, next.CgroupID, next.RemoteAddr
				r.Info.Values[flow.FieldBytesAcked] += 1448
				r.Info.Values[flow.FieldRTT] = uint64(20 + i%1000)
				if err := s.Write(&r); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64((cpuTime(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
		})
	}
}

// fanOut writes every record to each sink, as the daemon's outputs do.
type fanOut []flow.Sink

func (f fanOut) Write(r *flow.Record) error {
	for _, s := range f {
		if err := s.Write(r); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkScrape is a scrape of /metrics with the TCP metrics of 1,000
// cgroups (one backend) and 100 per-flow series, as Prometheus asks for
// it (gzipped).
func BenchmarkScrape(b *testing.B) {
	m, agg := scrapeSetup(b)
	m.RegisterTCP(agg, tcpstats.ByNone)
	benchScrape(b, m.handler(nil))
}

// BenchmarkRegistryScrape is the same scrape with the TCP metrics made
// const metrics of a registry, served by promhttp: what tcpExporter
// replaced.
func BenchmarkRegistryScrape(b *testing.B) {
	m, agg := scrapeSetup(b)
	m.RegisterTCP(agg, tcpstats.ByNone)
	reg := prometheus.NewRegistry()
	reg.MustRegister(refScrape{m.tcp})
	benchScrape(b, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

// refScrape is refCollector taking its snapshot at each scrape.
type refScrape struct{ e *tcpExporter }

func (r refScrape) Describe(chan<- *prometheus.Desc) {}

func (r refScrape) Collect(ch chan<- prometheus.Metric) {
	var snap tcpstats.Snapshot
	r.e.agg.Snapshot(&snap)
	refCollector{r.e, &snap}.Collect(ch)
}

// scrapeSetup returns metrics and an Aggregator holding samples of 10,000
// flows in 1,000 cgroups, their srtt and delivery rates spread.
func scrapeSetup(b *testing.B) (*Metrics, *tcpstats.Aggregator) {
	m, err := New("bench")
	if err != nil {
		b.Fatal(err)
	}
	agg := tcpstats.New(tcpstats.Config{Names: benchNames(1000), MaxCgroups: 1000, TopFlows: 100})
	opens, samples := sampleStream(10_000, 1000)
	for _, rs := range [][]flow.Record{opens, samples} {
		for i := range rs {
			rs[i].Info.Values[flow.FieldRTT] = uint64(10 + i*37%200_000)
			rs[i].Info.Values[flow.FieldDeliveryRate] = uint64(1e5 + i*9973%1e9)
			if err := agg.Write(&rs[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
	return m, agg
}

func benchScrape(b *testing.B, h http.Handler) {
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodGet, Path, nil)
		req.Header.Set("Accept", scrapeAccept)
		req.Header.Set("Accept-Encoding", "gzip")
		w := httptest.NewRecorder()
		w.Body = nil // discard
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("scrape: %d", w.Code)
		}
	}
}

// scrapeAccept is the Accept header of a Prometheus 2 scrape.
const scrapeAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// BenchmarkShortFlows is what the metrics add to each record of short
// flows: an open, a sample and a close record per flow, every flow new (a
// connection churn), in 1,000 cgroups. B/op is what a flow allocates.
func BenchmarkShortFlows(b *testing.B) {
	m, err := New("bench")
	if err != nil {
		b.Fatal(err)
	}
	agg := tcpstats.New(tcpstats.Config{Names: benchNames(1000), MaxCgroups: 1000})
	s := m.Sink(fanOut{flow.SinkFunc(func(*flow.Record) error { return nil }), agg})
	opens, _ := sampleStream(1, 1)
	r := opens[0]
	b.ReportAllocs()
	cpu := cpuTime(b)
	cookie := uint64(0)
	for b.Loop() {
		cookie++
		r.Cookie, r.CgroupID = cookie, cookie%1000+1
		for _, ev := range []flow.Event{flow.EventOpen, flow.EventSample, flow.EventClose} {
			r.Event = ev
			r.Info.Values[flow.FieldBytesAcked] += 4096
			if err := s.Write(&r); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64((cpuTime(b)-cpu).Nanoseconds())/float64(3*b.N), "cpu-ns/record")
}

// cpuTime is the CPU time the process has used: on a shared machine a
// benchmark's wall time per op grows with the other jobs; its CPU time
// much less.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
