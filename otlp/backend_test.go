package otlp_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/otlp/otlpconfig"
	"github.com/flowd/flowd/sink"
)

// TestBackendRecordsArrive runs a real backend over real TCP flows in a
// temporary cgroup into the JSON Lines output (complete lines) and the
// exporter side by side, as the daemon does, and checks that the
// collector wrote exactly the records of the file: the same count, the
// same values, joined on backend, cookie, time and event.
func TestBackendRecordsArrive(t *testing.T) {
	testutil.RequireRoot(t)
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{})
	for _, name := range []string{"netlink", "ebpf"} {
		t.Run(name, func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			var (
				b   backends.Backend
				err error
			)
			switch name {
			case "netlink":
				b, err = netlink.New(netlink.Config{Cgroup: cg, Interval: 50 * time.Millisecond})
			case "ebpf":
				if perr := ebpf.Probe(); perr != nil {
					t.Skipf("skipping: the ebpf backend cannot run here: %v", perr)
				}
				b, err = ebpf.New(ebpf.Config{Cgroup: cg, Mode: ebpf.ModePoll, Interval: 20 * time.Millisecond,
					RingbufSize: 1 << 20, FlushInterval: 50 * time.Millisecond})
			}
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()

			path := filepath.Join(t.TempDir(), "records.jsonl")
			file, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer file.Close()
			lines := sink.NewJSONL(file)
			lines.SetSamples(sink.SamplesFull)
			e := newExporter(t, baseConfig(col.GRPC, otlpconfig.ProtocolGRPC), nil)
			both := flow.SinkFunc(func(r *flow.Record) error { return errors.Join(lines.Write(r), e.Write(r)) })

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- b.Run(ctx, both) }()

			// Flows of both families that send, go idle and close.
			for _, network := range []struct{ net, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
				ln := testutil.Listen(t, cg, network.net, network.addr)
				for range 2 {
					p := testutil.Dial(t, cg, ln)
					for range 3 {
						p.Send(t, 4<<20)
						time.Sleep(60 * time.Millisecond)
					}
					p.Client.Close()
					testutil.ReadEOF(t, p.Server)
					p.Server.Close()
				}
			}
			time.Sleep(200 * time.Millisecond) // the last polls and drains
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("%s backend: %v", name, err)
			}
			if err := lines.Close(); err != nil {
				t.Fatal(err)
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}

			want := readLines(t, path)
			events := map[flow.Event]int{}
			for _, r := range want {
				events[r.Event]++
			}
			if len(want) < 8 || events[flow.EventSample] == 0 || events[flow.EventClose] == 0 {
				t.Fatalf("the flows made too few records to compare: %d (%v)", len(want), events)
			}
			got, _ := col.Records(t)
			var mine []flow.Record
			for _, r := range got {
				if r.Backend == name {
					mine = append(mine, r)
				}
			}
			testutil.CompareRecords(t, mine, want, false)
			if s := e.Stats(); s.Exported != uint64(len(want)) || s.Dropped.Total() != 0 {
				t.Errorf("stats %+v for %d records", s, len(want))
			}
			t.Logf("%d records (%v) in the file and the collector", len(want), events)
		})
	}
}

// readLines parses a JSON Lines file of complete lines.
func readLines(t *testing.T, path string) []flow.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var records []flow.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r flow.Record
		if err := sink.ParseJSON(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		records = append(records, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return records
}
