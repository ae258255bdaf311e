package ebpf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/backends/ebpf/internal/producer"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/sink"
)

// realisticRecord is a sample the backend sent on Linux 6.18 in the middle
// of a 64 MiB loopback transfer: every member present, with the magnitudes
// a busy flow has (pacing rates of 10^11, byte counters of 10^7).
func realisticRecord() bpfFlowdRecord {
	k := bpfFlowdRecord{
		Head: bpfFlowdHead{
			TimestampNs: 1_811_302_913_845,
			Cookie:      5601,
			CgroupId:    18360,
			Lport:       60112,
			Rport:       40211,
			Family:      afInet,
			Event:       uint8(flow.EventSample),
			NewState:    uint8(flow.StateEstablished),
		},
		Present: [2]uint64{^uint64(0), 1<<(flow.NumFields-64) - 1},
		Info: bpfFlowdTcpInfo{
			PacingRate: 681023200000, MaxPacingRate: 18446744073709551615,
			BytesAcked: 33423361, DeliveryRate: 39289800000,
			BusyTime: 8000, RwndLimited: 8000, BytesSent: 33423360,
			Rto: 204000, SndMss: 65483, RcvMss: 536, LastDataRecv: 8,
			Pmtu: 65535, RcvSsthresh: 65495, Rtt: 10, Rttvar: 74,
			SndSsthresh: 2147483647, SndCwnd: 52, Advmss: 65483, Reordering: 3,
			RcvSpace: 65495, SegsOut: 722, SegsIn: 342, NotsentBytes: 3601618,
			MinRtt: 2, DataSegsOut: 720, Delivered: 721, SndWnd: 23552, RcvWnd: 65536,
			State: 1, Options: 7, SndWscale: 10, RcvWscale: 10,
		},
	}
	copy(k.Head.Laddr[:], []byte{127, 0, 0, 1})
	copy(k.Head.Raddr[:], []byte{127, 0, 0, 1})
	for i, c := range "cubic" {
		k.Head.Ca[i] = int8(c)
	}
	return k
}

// BenchmarkDecodeEncode is the user-space cost of one record: decoding the
// raw ring buffer sample and encoding it as a JSON line into a reused
// buffer, as Run and sink.JSONL do. The record's time advances by 2 µs
// each time, as at 500,000 records/s.
func BenchmarkDecodeEncode(b *testing.B) {
	k := realisticRecord()
	raw := rawRecord(&k) // k itself: the loop moves its time on
	d := decoder{monoToWall: 1_795_000_000_000_000_000}
	var (
		r   flow.Record
		enc sink.Encoder
	)
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		if err := d.decode(raw, &r); err != nil {
			b.Fatal(err)
		}
		buf = append(enc.AppendJSON(buf[:0], &r), '\n')
		k.Head.TimestampNs += 2000
	}
	b.SetBytes(int64(len(buf)))
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// BenchmarkPipeline measures the whole user-space path of a record, end
// to end: ring buffer -> decode -> JSON -> file. A synthetic BPF producer
// (internal/producer), run with BPF_PROG_TEST_RUN on CPU 0, writes real
// records into the real backend's ring buffer with flowd's wakeup policy,
// at a set rate; the backend, with its defaults (4 MiB ring buffer, 100 ms
// flush interval), reads them on CPU 1 into a sink.JSONL writing a
// sink.File, which is flushed every flush interval: the daemon's output
// path. b.N is the number of records produced. The sub-benchmarks are the
// sample lines (samples=changes: partial lines, flowd's default;
// samples=full: complete lines, output.samples: full) and the offered rate
// ("max": as fast as the producer can). The records are spread over 1,024
// flows, so a flow's consecutive samples differ as a busy flow's do. Use
// -benchtime 3s or more for sustained runs.
//
// Besides ns/op (wall time per record produced) it reports:
//
//	records/s               records written to the file per second
//	drops                   records lost, from the backend's drop counter
//	lost                    records produced but neither written nor dropped (must be 0)
//	allocs/record           heap allocations of the whole process per record written
//	consumer-ns/record      CPU time (user+system) of the reading thread per record written
//	records/consumer-cpu-s  records written per CPU second of the reading thread
//	producer-ns/record      CPU time of the producing thread per record produced
//	others-cpu-%            CPU the rest of the machine used meanwhile, in % of one
//	                        CPU: other jobs competing with the benchmark
//
// The output file goes to $FLOWD_BENCH_DIR if set (say /dev/shm for
// tmpfs), else to the test's temporary directory.
func BenchmarkPipeline(b *testing.B) {
	testutil.RequireRoot(b)
	if runtime.NumCPU() < 2 {
		b.Skip("skipping: needs two CPUs, one producing and one consuming")
	}
	cg := testutil.TempCgroup(b)
	dir := os.Getenv("FLOWD_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	}
	for _, lines := range []struct {
		samples sink.Samples
		rates   []int
	}{
		{sink.SamplesChanges, []int{500_000, 1_000_000, 0}},
		{sink.SamplesFull, []int{500_000, 0}},
	} {
		b.Run("samples="+lines.samples.String(), func(b *testing.B) {
			for _, rate := range lines.rates {
				name := "rate=max"
				if rate > 0 {
					name = fmt.Sprintf("rate=%dk", rate/1000)
				}
				b.Run(name, func(b *testing.B) { benchPipeline(b, cg, dir, lines.samples, rate) })
			}
		})
	}
}

// CPUs the pipeline benchmark pins its threads to, and the consumer's
// nice value: with -20 it gets 98.9% of its CPU against one runnable
// task of nice 0 (CFS weights 88761 and 1024).
const (
	producerCPU  = 0
	consumerCPU  = 1
	consumerNice = -20
)

func benchPipeline(b *testing.B, cg, dir string, samples sink.Samples, rate int) {
	b.StopTimer()
	be, err := New(Config{Cgroup: cg})
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	defer be.Close()
	prod, err := producer.New(producer.Config{
		Events:      be.objs.Events,
		Drops:       be.objs.Drops,
		WakeupBytes: wakeupBytes(be.cfg.RingbufSize),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer prod.Close()
	path := filepath.Join(dir, "pipeline.jsonl")
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		b.Fatal(err)
	}
	f, err := sink.OpenFile(path, sink.FileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(path)
	defer f.Close()
	out := sink.NewJSONL(f)
	out.SetSamples(samples)
	counter := &countingSink{next: out}

	// The consumer: the backend's read loop on its own thread and CPU.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type consumed struct {
		cpu time.Duration
		err error
	}
	started := make(chan error, 1)
	done := make(chan consumed, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := pinThread(consumerCPU); err != nil {
			started <- err
			return
		}
		// Other jobs of a shared host must not take the consumer's
		// core: the figure is what flowd sustains on one core.
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, consumerNice); err != nil {
			started <- fmt.Errorf("setting the consumer's nice value: %w", err)
			return
		}
		started <- nil
		start := threadCPU()
		err := be.Run(ctx, counter)
		done <- consumed{threadCPU() - start, err}
	}()
	if err := <-started; err != nil {
		b.Fatal(err)
	}
	// Flush the output every flush interval, as the daemon does.
	stopFlush := make(chan struct{})
	flushed := make(chan error, 1)
	go func() {
		t := time.NewTicker(be.cfg.FlushInterval)
		defer t.Stop()
		for {
			select {
			case <-stopFlush:
				flushed <- nil
				return
			case <-t.C:
				if err := out.Flush(); err != nil {
					flushed <- err
					return
				}
			}
		}
	}()

	// The producer, on this goroutine's thread and CPU.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := pinThread(producerCPU); err != nil {
		b.Fatal(err)
	}
	busyStart, selfStart, allocStart := machineBusy(), processCPU(), mallocs()
	b.StartTimer()
	start, prodStart := time.Now(), threadCPU()
	if err := produce(prod, b.N, rate, start); err != nil {
		b.Fatal(err)
	}
	prodCPU := threadCPU() - prodStart
	cancel() // Run drains what the ring buffer holds, then returns
	c := <-done
	elapsed := time.Since(start)
	b.StopTimer()
	others := (machineBusy() - busyStart) - (processCPU() - selfStart)
	allocs := mallocs() - allocStart

	close(stopFlush)
	if err := <-flushed; err != nil {
		b.Fatal(err)
	}
	if c.err != nil {
		b.Fatalf("Run: %v", c.err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
	drops, err := be.Drops()
	if err != nil {
		b.Fatal(err)
	}
	runs, err := prod.Runs()
	if err != nil {
		b.Fatal(err)
	}
	lines, err := countLines(path)
	if err != nil {
		b.Fatal(err)
	}
	if lines != counter.n {
		b.Errorf("%d lines in the file, %d records written", lines, counter.n)
	}
	lost := int64(runs) - int64(counter.n) - int64(drops)
	if lost != 0 {
		b.Errorf("%d records produced, %d written, %d dropped: %d unaccounted for", runs, counter.n, drops, lost)
	}
	b.ReportMetric(float64(counter.n)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(drops), "drops")
	b.ReportMetric(float64(lost), "lost")
	if counter.n > 0 {
		b.ReportMetric(float64(allocs)/float64(counter.n), "allocs/record")
		b.ReportMetric(float64(c.cpu.Nanoseconds())/float64(counter.n), "consumer-ns/record")
		b.ReportMetric(float64(counter.n)/c.cpu.Seconds(), "records/consumer-cpu-s")
	}
	b.ReportMetric(float64(prodCPU.Nanoseconds())/float64(max(runs, 1)), "producer-ns/record")
	b.ReportMetric(max(0, 100*others.Seconds()/elapsed.Seconds()), "others-cpu-%")
}

// produce runs the producer n times, at rate records per second from
// start (as fast as it can when rate is 0), in batches of at most a
// millisecond's worth.
func produce(p *producer.Producer, n, rate int, start time.Time) error {
	const maxBatch = 4096
	batch := maxBatch
	if rate > 0 {
		batch = max(1, min(maxBatch, rate/1000))
	}
	for done := 0; done < n; {
		k := min(batch, n-done)
		if rate > 0 {
			due := int(time.Since(start).Seconds() * float64(rate))
			if due-done < k {
				time.Sleep(time.Duration(float64(done+k-due) / float64(rate) * float64(time.Second)))
				continue
			}
		}
		if err := p.Run(uint32(k)); err != nil {
			return err
		}
		done += k
	}
	return nil
}

// countingSink counts the records it passes on. Only Run's goroutine
// writes to it.
type countingSink struct {
	next flow.Sink
	n    uint64
}

func (s *countingSink) Write(r *flow.Record) error {
	s.n++
	return s.next.Write(r)
}

// pinThread binds the calling thread (locked to its goroutine) to one CPU.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pinning thread to CPU %d: %w", cpu, err)
	}
	return nil
}

// mallocs returns how many heap allocations the process has made.
func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// processCPU returns the CPU time, user and system, of this process.
func processCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// machineBusy returns the time all CPUs have spent not idle, from
// /proc/stat (0 if it cannot be read): user, nice, system, irq, softirq
// and steal.
func machineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := bytes.Cut(data, []byte{'\n'})
	fields := strings.Fields(string(line))
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0
	}
	var ticks uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system (idle iowait) irq softirq steal
		v, _ := strconv.ParseUint(fields[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// threadCPU returns the CPU time, user and system, of the calling thread.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func countLines(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n uint64
	buf := make([]byte, 1<<20)
	for {
		k, err := f.Read(buf)
		n += uint64(bytes.Count(buf[:k], []byte{'\n'}))
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// BenchmarkAttachAgain is how long after the mkdir of a cgroup created
// again at the configured path the backend is attached to it: the window
// in which a connection opened and closed in the new cgroup is missed. A
// cgroup is removed and created again per iteration; only the time from
// the mkdir to CgroupState saying attached is counted.
func BenchmarkAttachAgain(b *testing.B) {
	testutil.RequireRoot(b)
	cg := testutil.TempCgroup(b)
	be, err := New(Config{Cgroup: cg})
	if err != nil {
		b.Fatal(err)
	}
	testutil.Run(b, be)
	wait := func(attached bool) {
		for be.CgroupState().Attached != attached {
			time.Sleep(10 * time.Microsecond)
		}
	}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := os.Remove(cg); err != nil {
			b.Fatal(err)
		}
		wait(false)
		b.StartTimer()
		if err := os.Mkdir(cg, 0o755); err != nil {
			b.Fatal(err)
		}
		wait(true)
	}
}
