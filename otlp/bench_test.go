package otlp

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/metrics/tcpstats"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

// BenchmarkEncode is the cost of encoding one record into a batch.
func BenchmarkEncode(b *testing.B) {
	r := realisticRecord()
	e := newEncoder(Resource{HostName: "web-1", Version: "v1.2.3"}, nil)
	room := e.headerRoom()
	buf := make([]byte, room, room+512*maxRecordLen)
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		buf = e.appendRecord(buf, &r)
		if n++; n == 512 {
			_ = e.frame(buf, room)
			b.SetBytes(int64(len(buf)-room) / 512)
			buf, n = buf[:room], 0
		}
	}
}

// BenchmarkExport is flowd's CPU per record exported to a real collector
// (that discards what it receives) on loopback: copying the record into
// the queue, encoding, compressing when asked, and sending, with every
// goroutine of the process counted. The writer waits while the queue is
// half full, so that nothing is dropped and every record counts. One op
// is one record. Besides ns/op it reports:
//
//	cpu-ns/record            CPU time (user+system) of the whole process per record exported
//	sys-ns/record            its system time; on loopback the kernel charges the sender
//	                         for much of receiving what it sends
//	collector-cpu-ns/record  the collector's CPU time per record
//	records/s                records exported per second of wall time
//	bytes/record             request bytes per record, before compression
//	drops, lost              records dropped, and neither exported nor dropped (both must be 0)
func BenchmarkExport(b *testing.B) {
	col := testutil.StartOTelCollector(b, testutil.OTelCollectorOptions{Discard: true})
	for _, p := range []otlpconfig.Protocol{otlpconfig.ProtocolGRPC, otlpconfig.ProtocolHTTP} {
		b.Run(strings.ReplaceAll(string(p), "/", "-"), func(b *testing.B) {
			for _, c := range []otlpconfig.Compression{otlpconfig.CompressionNone, otlpconfig.CompressionGzip} {
				b.Run(string(c), func(b *testing.B) {
					cfg := otlpconfig.Default()
					cfg.Endpoint, cfg.Protocol, cfg.Compression = col.GRPC, p, c
					if p == otlpconfig.ProtocolHTTP {
						cfg.Endpoint = col.HTTP
					}
					benchExport(b, col, cfg, 0)
				})
			}
		})
	}
}

// BenchmarkSustained offers records at a fixed rate, in steps of 200 µs,
// to the exporter at its defaults (gRPC, no compression) and a real
// collector on loopback that discards them. A rate is sustained when
// nothing is dropped or lost (-benchtime 3s or more). Metrics as
// BenchmarkExport's.
func BenchmarkSustained(b *testing.B) {
	col := testutil.StartOTelCollector(b, testutil.OTelCollectorOptions{Discard: true})
	for _, rate := range []int{100_000, 200_000, 400_000} {
		b.Run(fmt.Sprintf("rate=%dk", rate/1000), func(b *testing.B) {
			cfg := otlpconfig.Default()
			cfg.Endpoint = col.GRPC
			benchExport(b, col, cfg, rate)
		})
	}
}

// benchExport writes b.N records to an exporter of cfg, at rate records/s
// (0 = as fast as the exporter takes them without dropping), closes it and
// reports.
func benchExport(b *testing.B, col *testutil.OTelCollector, cfg otlpconfig.Config, rate int) {
	log, _ := logtest.NewNullLogger()
	e, err := New(cfg, Options{Resource: Resource{HostName: "bench-host", Version: "v1.2.3"}, Log: log})
	if err != nil {
		b.Fatal(err)
	}
	r := realisticRecord()
	enc := newEncoder(Resource{}, nil)
	bytesPerRecord := len(enc.appendRecord(nil, &r))

	b.ResetTimer()
	cpu0, sys0, colCPU0, start := processCPU(), systemCPU(), col.CPU(b), time.Now()
	const step = 200 * time.Microsecond
	for i := 0; i < b.N; i++ {
		r.Time = r.Time.Add(time.Microsecond)
		r.Cookie = uint64(i % 1000)
		e.Write(&r)
		if i%256 != 255 {
			continue
		}
		if rate > 0 {
			for due := start.Add(time.Duration(i+1) * time.Second / time.Duration(rate)); time.Now().Before(due); {
				time.Sleep(step)
			}
		} else {
			for e.Stats().Queued > cfg.QueueSize/2 {
				time.Sleep(step)
			}
		}
	}
	produced := time.Since(start)
	if err := e.Close(); err != nil {
		b.Fatal(err)
	}
	elapsed, cpu, sys, colCPU := time.Since(start), processCPU()-cpu0, systemCPU()-sys0, col.CPU(b)-colCPU0
	b.StopTimer()

	s := e.Stats()
	exported := max(s.Exported, 1)
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(exported), "cpu-ns/record")
	b.ReportMetric(float64(sys.Nanoseconds())/float64(exported), "sys-ns/record")
	b.ReportMetric(float64(colCPU.Nanoseconds())/float64(exported), "collector-cpu-ns/record")
	if rate > 0 {
		elapsed = produced // the rate offered, when nothing was lost
	}
	b.ReportMetric(float64(s.Exported)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(bytesPerRecord), "bytes/record")
	b.ReportMetric(float64(s.Dropped.Total()), "drops")
	b.ReportMetric(float64(uint64(b.N)-s.Exported-s.Dropped.Total()), "lost")
}

// processCPU returns the user and system time of the whole process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// systemCPU returns the system time of the whole process: the kernel's
// work for it, which on loopback includes receiving what it sends.
func systemCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Stime.Nano())
}

// BenchmarkIdle is what an exporter with nothing to send costs: its
// senders' and reporter's timers. One op is one second; "none" is the
// test process without an exporter.
//
//	cpu-us/s   CPU time of the process per second
func BenchmarkIdle(b *testing.B) {
	for _, exporter := range []bool{false, true} {
		b.Run(map[bool]string{false: "none", true: "exporter"}[exporter], func(b *testing.B) {
			if exporter {
				cfg := otlpconfig.Default()
				cfg.Endpoint = testutil.FreeLoopbackAddr(b) // never reached: nothing is sent
				log, _ := logtest.NewNullLogger()
				e, err := New(cfg, Options{Log: log})
				if err != nil {
					b.Fatal(err)
				}
				defer e.Close()
			}
			time.Sleep(100 * time.Millisecond) // past starting
			cpu0 := processCPU()
			for b.Loop() {
				time.Sleep(time.Second)
			}
			b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/s")
		})
	}
}

// BenchmarkFlowRecords measures, with the ebpf backend at flowd's default
// configuration (poll, 1 s), how many records flows make and how large
// they are as OTLP, for the sizing of docs/otlp.md. Sub-benchmarks:
// long (10 flows sending 8 MB/s each for 3 s) and short (100 connections
// that send 64 KiB and close). One op is one such run. It reports:
//
//	records/flow-s    records per flow per second (long)
//	records/conn      records per connection (short)
//	bytes/record      encoded log record, uncompressed
//	gzip-bytes/record the same in gzip-compressed requests of 512
func BenchmarkFlowRecords(b *testing.B) {
	testutil.RequireRoot(b)
	if err := ebpf.Probe(); err != nil {
		b.Skipf("skipping: the ebpf backend cannot run here: %v", err)
	}
	b.Run("long", func(b *testing.B) {
		const flows, seconds, rate = 10, 3, 8 << 20
		for b.Loop() {
			records := flowRecords(b, func(cg string) {
				ln := testutil.Listen(b, cg, "tcp4", "127.0.0.1:0")
				var wg sync.WaitGroup
				for range flows {
					p := testutil.Dial(b, cg, ln)
					go io.Copy(io.Discard, p.Server)
					wg.Go(func() {
						chunk := make([]byte, rate/100)
						for range seconds * 100 {
							p.Client.Write(chunk)
							time.Sleep(10 * time.Millisecond)
						}
					})
				}
				wg.Wait()
			})
			b.ReportMetric(float64(len(records))/(2*flows*seconds), "records/flow-s") // both ends are in the cgroup
			reportSizes(b, records)
		}
	})
	b.Run("short", func(b *testing.B) {
		const conns = 100
		for b.Loop() {
			records := flowRecords(b, func(cg string) {
				ln := testutil.Listen(b, cg, "tcp4", "127.0.0.1:0")
				for range conns {
					p := testutil.Dial(b, cg, ln)
					p.Send(b, 64<<10)
					p.Client.Close()
					testutil.ReadEOF(b, p.Server)
					p.Server.Close()
				}
			})
			b.ReportMetric(float64(len(records))/(2*conns), "records/conn") // both ends are in the cgroup
			reportSizes(b, records)
		}
	})
}

// flowRecords runs the ebpf backend at its defaults on a new cgroup while
// traffic makes flows in it, and returns the records.
func flowRecords(b *testing.B, traffic func(cg string)) []flow.Record {
	cg := testutil.TempCgroup(b)
	be, err := ebpf.New(ebpf.Config{Cgroup: cg, Mode: ebpf.ModePoll, Interval: time.Second,
		RingbufSize: 4 << 20, FlushInterval: 100 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	col, stop := testutil.Start(b, be)
	traffic(cg)
	time.Sleep(300 * time.Millisecond) // the last records drained
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	return col.Records(0)
}

// reportSizes reports the sizes of records as OTLP.
func reportSizes(b *testing.B, records []flow.Record) {
	if len(records) == 0 {
		b.Fatal("no records")
	}
	e := newEncoder(Resource{HostName: "host-0001.example", Version: "v1.2.3"}, nil)
	room := e.headerRoom()
	var raw, zipped int
	var zbuf bytes.Buffer
	zw := gzip.NewWriter(&zbuf)
	for batch := range slices.Chunk(records, 512) {
		buf := make([]byte, room)
		for i := range batch {
			buf = e.appendRecord(buf, &batch[i])
		}
		req := e.frame(buf, room)
		raw += len(req)
		zbuf.Reset()
		zw.Reset(&zbuf)
		zw.Write(req)
		zw.Close()
		zipped += zbuf.Len()
	}
	b.ReportMetric(float64(raw)/float64(len(records)), "bytes/record")
	b.ReportMetric(float64(zipped)/float64(len(records)), "gzip-bytes/record")
}

// BenchmarkMetricsEncode is the cost and size of one push of the TCP
// metrics of 1,000 cgroups (metrics.max_cgroups' default) of one backend,
// every histogram observed. One op is one push. Besides ns/op it reports
// bytes/push, gzip-bytes/push and bytes/cgroup.
func BenchmarkMetricsEncode(b *testing.B) {
	const cgroups = 1000
	names := cgroupPaths{}
	agg := tcpstats.New(tcpstats.Config{Names: names, MaxCgroups: cgroups})
	now := time.Now()
	for c := range uint64(cgroups) {
		names[c] = fmt.Sprintf("system.slice/service-%d.service", c)
		for ev, k := range []flow.Event{flow.EventOpen, flow.EventSample, flow.EventClose} {
			r := flow.Record{Time: now, Backend: "ebpf", Event: k, Cookie: c, CgroupID: c}
			r.Info.Set(flow.FieldBytesAcked, uint64(ev)*1e6*c)
			r.Info.Set(flow.FieldBytesReceived, uint64(ev)*1e4*c)
			r.Info.Set(flow.FieldRTT, 100+c*100)
			r.Info.Set(flow.FieldMinRTT, 50+c*50)
			r.Info.Set(flow.FieldDeliveryRate, 1e5*(c+1))
			if err := agg.Write(&r); err != nil {
				b.Fatal(err)
			}
		}
	}
	enc := newMetricsEncoder(Resource{HostName: "web-1", Version: "v1.2.3"}, tcpstats.ByNone)
	var reqs []metricsRequest
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if reqs, err = enc.encode(agg, now); err != nil {
			b.Fatal(err)
		}
	}
	var size int
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	for _, r := range reqs {
		size += len(r.body)
		zw.Write(r.body)
	}
	zw.Close()
	b.ReportMetric(float64(size), "bytes/push")
	b.ReportMetric(float64(zipped.Len()), "gzip-bytes/push")
	b.ReportMetric(float64(size)/cgroups, "bytes/cgroup")
}

type cgroupPaths map[uint64]string

func (n cgroupPaths) Path(id uint64) (string, bool) { p, ok := n[id]; return p, ok }
