package metrics

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

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
// record: the counting sink and the TCP statistics, for samples of 10,000
// flows in 1,000 cgroups (the output itself discards).
func BenchmarkMetricsPath(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  tcpstats.Config
	}{
		{"cgroups", tcpstats.Config{MaxCgroups: 1000}},
		{"cgroups+by+per_flow", tcpstats.Config{MaxCgroups: 1000, By: tcpstats.ByRemotePrefix, IPv4Bits: 24, IPv6Bits: 64, MaxBy: 100, TopFlows: 100}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			m, err := New("bench")
			if err != nil {
				b.Fatal(err)
			}
			tc.cfg.Names = benchNames(1000)
			agg := tcpstats.New(tc.cfg)
			s := m.Sink(fanOut{flow.SinkFunc(func(*flow.Record) error { return nil }), agg})
			opens, samples := sampleStream(10_000, 1000)
			for i := range opens {
				if err := s.Write(&opens[i]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r := &samples[i%len(samples)]
				r.Info.Values[flow.FieldBytesAcked] += 1448
				r.Info.Values[flow.FieldRTT] = uint64(20 + i%1000)
				if err := s.Write(r); err != nil {
					b.Fatal(err)
				}
				i++
			}
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

// BenchmarkScrape is a scrape of /metrics's content with the TCP metrics
// of 1,000 cgroups (one backend) and 100 per-flow series.
func BenchmarkScrape(b *testing.B) {
	m, err := New("bench")
	if err != nil {
		b.Fatal(err)
	}
	agg := tcpstats.New(tcpstats.Config{Names: benchNames(1000), MaxCgroups: 1000, TopFlows: 100})
	m.RegisterTCP(agg, tcpstats.ByNone)
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
	h := m.handler(nil)
	b.ReportAllocs()
	for b.Loop() {
		// As Prometheus asks: OpenMetrics, gzipped.
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
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(3*b.N), "ns/record")
}
