package daemon

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	logtest "github.com/sirupsen/logrus/hooks/test"
)

// TestOTLPExport: a real transfer between two cgroups, recorded by both
// backends into the file and over OTLP to a real collector. The collector
// holds exactly the records of the file, and the TCP metrics it received
// last (pushed when flowd stops) are what the records say, and what the
// endpoint served before within a sample.
func TestOTLPExport(t *testing.T) {
	tr := newTree(t)
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	cfg := testConfig("ebpf", "netlink")
	cfg.Netlink.Interval = 100 * time.Millisecond
	cfg.Output.OTLP.Endpoint = col.GRPC
	cfg.Output.OTLP.ExportInterval = 100 * time.Millisecond
	cfg.Output.OTLP.MetricsInterval = time.Second
	l := startLive(t, cfg, tr)

	ln := testutil.Listen(t, tr.a, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, tr.b, ln)
	p.Send(t, 4<<20)
	time.Sleep(3 * cfg.Netlink.Interval) // netlink has seen the flow
	p.Send(t, 4<<20)
	p.Quiesce(t)
	cookies := []uint64{testutil.Cookie(t, p.Client), testutil.Cookie(t, p.Server)}
	testutil.WaitFor(t, "a push of the TCP metrics", 5*time.Second, func() bool {
		v, _ := value(l.scrape(t), "flowd_otlp_exported_data_points_total")
		return v > 0
	})
	p.Client.Close()
	testutil.ReadEOF(t, p.Server)
	p.Server.Close()
	l.waitClosed(t, []string{"ebpf", "netlink"}, cookies...)
	scraped := l.scrape(t)
	if err := l.stop(); err != nil {
		t.Fatal(err)
	}

	rs := l.records(t)
	got, resources := col.Records(t)
	testutil.CompareRecords(t, got, rs, false)
	host, _ := os.Hostname()
	for _, res := range resources {
		if res["host.name"] != host || res["service.version"] != "test" || res["service.name"] != "flowd" {
			t.Fatalf("resource %v, want host.name %q and service.version test", res, host)
		}
	}

	pushed := col.Sums(t)
	acked := grown(rs, flow.FieldBytesAcked)
	for _, backend := range []string{"ebpf", "netlink"} {
		for _, c := range []struct {
			rel string
			id  uint64
		}{{tr.relA, tr.idA}, {tr.relB, tr.idB}} {
			key := fmt.Sprintf("flowd.tcp.bytes_acked{backend=%q,cgroup=%q}", backend, c.rel)
			want := acked[backend][c.id]
			if got, ok := pushed[key]; !ok || uint64(got) != want {
				t.Errorf("%s: the last push has %d (found: %v), want %d as the records say", key, got, ok, want)
			}
			served, _ := value(scraped, "flowd_tcp_bytes_acked_total", "backend", backend, "cgroup", c.rel)
			if step := largestStep(rs, backend, c.id); float64(want)-served > float64(step) || served > float64(want) {
				t.Errorf("%s: the endpoint served %v, the last push %d: more than a sample (%d bytes) apart", key, served, want, step)
			}
		}
	}
	t.Logf("%d records in the file and the collector; %d series pushed", len(rs), len(pushed))
}

// largestStep is the most bytes_acked grew by from one record to the next
// in a flow of backend in cgroup id: a sample's worth.
func largestStep(rs []flow.Record, backend string, id uint64) uint64 {
	last := map[uint64]uint64{}
	var most uint64
	for _, r := range rs {
		v, ok := r.Info.Get(flow.FieldBytesAcked)
		if r.Backend != backend || r.CgroupID != id || !ok {
			continue
		}
		if prev, seen := last[r.Cookie]; seen && v > prev {
			most = max(most, v-prev)
		}
		last[r.Cookie] = v
	}
	return most
}

// TestTCPMetricsComputed: the TCP metrics are computed when the endpoint
// serves them or the OTLP export pushes them, and only then.
func TestTCPMetricsComputed(t *testing.T) {
	cgroupRoot(t)
	for _, tc := range []struct {
		name   string
		change func(c *config.Config)
		want   bool
	}{
		{"nothing reads them", func(c *config.Config) {}, false},
		{"metrics.listen", func(c *config.Config) { c.Metrics.Listen = "127.0.0.1:0" }, true},
		{"OTLP", func(c *config.Config) { c.Output.OTLP.Endpoint = "127.0.0.1:4317" }, true},
		{"OTLP without metrics", func(c *config.Config) {
			c.Output.OTLP.Endpoint, c.Output.OTLP.MetricsInterval = "127.0.0.1:4317", 0
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("ebpf")
			cfg.Output.TCPInfo = []flow.Field{flow.FieldSndCwnd}
			tc.change(cfg)
			log, _ := logtest.NewNullLogger()
			d, err := New(cfg, log, "test")
			if err != nil {
				t.Fatal(err)
			}
			if got := d.tcp != nil; got != tc.want {
				t.Errorf("TCP metrics computed: %v, want %v", got, tc.want)
			}
			// The eBPF program must read what the metrics are made of.
			if got := len(d.members()) > 1; got != tc.want {
				t.Errorf("members read %v with the TCP metrics computed %v", d.members(), tc.want)
			}
		})
	}
}
