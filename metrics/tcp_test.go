package metrics

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics/tcpstats"
)

// refCollector turns a snapshot into client_golang's const metrics: what
// the registry would serve of the TCP metrics, the reference of tcpExporter.
type refCollector struct {
	e    *tcpExporter
	snap *tcpstats.Snapshot
}

func (c refCollector) Describe(chan<- *prometheus.Desc) {} // unchecked

func (c refCollector) Collect(ch chan<- prometheus.Metric) {
	for _, f := range c.e.families {
		h := f.header()
		switch f := f.(type) {
		case *seriesFamily:
			desc := prometheus.NewDesc(h.name, h.help, []string{labelBackend, f.label}, nil)
			series := c.snap.Cgroups
			if f.remote {
				series = c.snap.Remote
			}
			for i := range series {
				s := &series[i]
				if f.histogram == nil {
					vt := prometheus.CounterValue
					if h.typ == "gauge" {
						vt = prometheus.GaugeValue
					}
					ch <- prometheus.MustNewConstMetric(desc, vt, float64(f.value(s)), s.Backend, s.Key)
					continue
				}
				hist := f.histogram(s)
				buckets := map[float64]uint64{}
				var n uint64
				for j, le := range f.les {
					n += hist.Counts[j]
					v, err := strconv.ParseFloat(le, 64)
					if err != nil {
						panic(err)
					}
					buckets[v] = n
				}
				ch <- prometheus.MustNewConstHistogram(desc, hist.Count, hist.Sum/f.perBase, buckets, s.Backend, s.Key)
			}
		case *flowFamily:
			desc := prometheus.NewDesc(h.name, h.help, flowLabelNames[:], nil)
			vt := prometheus.GaugeValue
			if h.typ == "counter" {
				vt = prometheus.CounterValue
			}
			for i := range c.snap.Flows {
				x := &c.snap.Flows[i]
				ch <- prometheus.MustNewConstMetric(desc, vt, f.value(x), x.Backend, x.Cgroup, strconv.FormatUint(x.Cookie, 10),
					x.LocalAddr.String(), strconv.Itoa(int(x.LocalPort)), x.RemoteAddr.String(), strconv.Itoa(int(x.RemotePort)))
			}
		case ignoredFamily:
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(h.name, h.help, nil, nil), prometheus.CounterValue, float64(c.snap.Ignored))
		}
	}
}

// names is a CgroupNames of fixed paths.
type names map[uint64]string

func (n names) Path(id uint64) (string, bool) {
	p, ok := n[id]
	return p, ok
}

// filledAggregator returns an Aggregator holding flows of two backends in
// cgroups whose names need escaping, with values in every histogram.
func filledAggregator(t testing.TB, by tcpstats.By, cgroups ...string) *tcpstats.Aggregator {
	n := names{}
	for i, c := range cgroups {
		n[uint64(i+1)] = c
	}
	agg := tcpstats.New(tcpstats.Config{Names: n, MaxCgroups: 100, By: by, IPv4Bits: 24, IPv6Bits: 64, MaxBy: 100, TopFlows: 20})
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	cookie := uint64(0)
	for _, backend := range []string{flow.BackendNetlink, flow.BackendEBPF} {
		for i := range cgroups {
			for k := range 3 {
				cookie++
				r := flow.Record{Time: t0, Backend: backend, Event: flow.EventOpen, Cookie: cookie * 997, CgroupID: uint64(i + 1),
					Family: 6, LocalAddr: netip.MustParseAddr("2001:db8::1"), LocalPort: uint16(1000 + k),
					RemoteAddr: netip.MustParseAddr("2001:db8:1::" + strconv.Itoa(k+1)), RemotePort: uint16(443 + k)}
				if k == 2 {
					r.Family, r.LocalAddr, r.RemoteAddr = 4, netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.0.2.9")
				}
				for ev, step := range []flow.Event{flow.EventOpen, flow.EventSample, flow.EventSample, flow.EventClose}[:4-k%2] {
					r.Event = step
					r.Time = t0.Add(time.Duration(ev) * time.Second)
					r.Info.Set(flow.FieldBytesAcked, uint64(ev)*1_000_000*cookie)
					r.Info.Set(flow.FieldBytesReceived, uint64(ev)*333*cookie)
					r.Info.Set(flow.FieldBytesRetrans, uint64(ev)*1448)
					r.Info.Set(flow.FieldTotalRetrans, uint64(ev))
					r.Info.Set(flow.FieldRTT, 7+cookie*cookie*137)
					r.Info.Set(flow.FieldMinRTT, 5+cookie*91)
					r.Info.Set(flow.FieldDeliveryRate, cookie*cookie*12_345_678)
					r.Info.Set(flow.FieldSndCwnd, 10+cookie)
					if err := agg.Write(&r); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
	return agg
}

// TestTextReference: the TCP metrics' text is what client_golang and
// expfmt make of the same metrics, byte for byte.
func TestTextReference(t *testing.T) {
	for _, tc := range []struct {
		name    string
		by      tcpstats.By
		cgroups []string
	}{
		{"cgroups", tcpstats.ByNone, []string{"/", "system.slice/nginx.service", "user.slice"}},
		{"escaped", tcpstats.ByRemotePort, []string{`a"quote`, `back\slash`, "new\nline", "ünïcödé", "\xff\xfebad utf-8"}},
		{"by prefix, more prefixes than cgroups", tcpstats.ByRemotePrefix, []string{"a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMetrics(t)
			agg := filledAggregator(t, tc.by, tc.cgroups...)
			m.RegisterTCP(agg, tc.by)
			var got bytes.Buffer
			if err := m.tcp.writeText(&got); err != nil {
				t.Fatal(err)
			}

			var snap tcpstats.Snapshot
			agg.Snapshot(&snap) // the same selection of flows: within a second of the first
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(refCollector{m.tcp, &snap})
			families, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			for _, f := range families {
				if _, err := expfmt.MetricFamilyToText(&want, f); err != nil {
					t.Fatal(err)
				}
			}
			if got.String() != want.String() {
				gl, wl := strings.Split(got.String(), "\n"), strings.Split(want.String(), "\n")
				for i := range min(len(gl), len(wl)) {
					if gl[i] != wl[i] {
						t.Fatalf("line %d:\n got %s\nwant %s", i+1, gl[i], wl[i])
					}
				}
				t.Fatalf("%d lines, want %d", len(gl), len(wl))
			}
			if n := strings.Count(got.String(), "\n"); n < 400 {
				t.Errorf("only %d lines", n)
			}
			for _, want := range []string{"flowd_flow_srtt_seconds{", "flowd_tcp_srtt_seconds_bucket{", "flowd_tcp_records_ignored_total 0"} {
				if !strings.Contains(got.String(), want) {
					t.Errorf("no %q in the text", want)
				}
			}
			if (tc.by != tcpstats.ByNone) != strings.Contains(got.String(), "flowd_tcp_remote_bytes_acked_total{") {
				t.Errorf("flowd_tcp_remote_* served: %v, want %v", !(tc.by != tcpstats.ByNone), tc.by != tcpstats.ByNone)
			}
		})
	}
}

// FuzzTextReference: any cgroup name gives the text expfmt would write.
func FuzzTextReference(f *testing.F) {
	for _, s := range []string{"a", `a"b`, `\`, "\n", "\xff", "system.slice/x.service", "}", "le=\"1\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cgroup string) {
		m, err := New("fuzz")
		if err != nil {
			t.Fatal(err)
		}
		agg := filledAggregator(t, tcpstats.ByNone, cgroup)
		m.RegisterTCP(agg, tcpstats.ByNone)
		var got, want bytes.Buffer
		if err := m.tcp.writeText(&got); err != nil {
			t.Fatal(err)
		}
		var snap tcpstats.Snapshot
		agg.Snapshot(&snap)
		reg := prometheus.NewRegistry()
		reg.MustRegister(refCollector{m.tcp, &snap})
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if _, err := expfmt.MetricFamilyToText(&want, f); err != nil {
				t.Fatal(err)
			}
		}
		if got.String() != want.String() {
			t.Fatalf("text of cgroup %q differs from expfmt's", cgroup)
		}
	})
}
