package otlp

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/internal/testutil"
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
	for _, p := range []Protocol{ProtocolGRPC, ProtocolHTTP} {
		for _, c := range []Compression{CompressionNone, CompressionGzip} {
			name := fmt.Sprintf("%s/%s", strings.ReplaceAll(string(p), "/", "-"), c)
			b.Run(name, func(b *testing.B) {
				cfg := Default()
				cfg.Endpoint, cfg.Protocol, cfg.Compression = col.GRPC, p, c
				if p == ProtocolHTTP {
					cfg.Endpoint = col.HTTP
				}
				benchExport(b, col, cfg, 0)
			})
		}
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
			cfg := Default()
			cfg.Endpoint = col.GRPC
			benchExport(b, col, cfg, rate)
		})
	}
}

// benchExport writes b.N records to an exporter of cfg, at rate records/s
// (0 = as fast as the exporter takes them without dropping), closes it and
// reports.
func benchExport(b *testing.B, col *testutil.OTelCollector, cfg Config, rate int) {
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
