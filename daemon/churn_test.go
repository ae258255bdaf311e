package daemon

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// BenchmarkShortConnections shows what short connections put in the
// output, at the defaults and with output.events: [open, close]: lines and
// bytes per connection (both of its ends are flows), and how many of each
// event. Each connection moves 4 KB each way over loopback, in a cgroup
// the daemon records with the eBPF backend.
func BenchmarkShortConnections(b *testing.B) {
	testutil.RequireRoot(b)
	for _, tc := range []struct {
		name   string
		events []flow.Event
	}{
		{"events=all", config.Default().Output.Events},
		{"events=open,close", []flow.Event{flow.EventOpen, flow.EventClose}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cg := testutil.TempCgroup(b)
			cfg := config.Default()
			cfg.Backends = []config.Backend{flow.BackendEBPF}
			cfg.Cgroup = cg
			cfg.Output.Events = tc.events
			log, hook := logtest.NewNullLogger()
			d, err := New(cfg, log, "bench")
			if err != nil {
				b.Fatal(err)
			}
			out := &syncBuffer{}
			d.out = out
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			stop := sync.OnceValue(func() error { cancel(); return <-done })
			b.Cleanup(func() { stop() })
			testutil.WaitFor(b, "the daemon to record", 10*time.Second, func() bool { return logged(hook, "recording flows") })

			ln := testutil.Listen(b, cg, "tcp4", "127.0.0.1:0")
			go echoEach(ln, 4<<10)
			msg := make([]byte, 4<<10)
			b.ResetTimer()
			testutil.InCgroup(b, cg, func() {
				for range b.N {
					c, err := net.Dial("tcp4", ln.Addr().String())
					if err != nil {
						b.Fatal(err)
					}
					if _, err := c.Write(msg); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(c, msg); err != nil {
						b.Fatal(err)
					}
					c.Close()
				}
			})
			b.StopTimer()
			// Both ends of every connection close; then the output holds
			// everything the connections made.
			testutil.WaitFor(b, "the close records", 10*time.Second, func() bool {
				return strings.Count(out.String(), `"event":"close"`) >= 2*b.N
			})
			if err := stop(); err != nil {
				b.Fatal(err)
			}

			lines := []byte(out.String())
			conns := float64(b.N)
			b.ReportMetric(float64(bytes.Count(lines, []byte("\n")))/conns, "lines/conn")
			b.ReportMetric(float64(len(lines))/conns, "bytes/conn")
			for _, ev := range []flow.Event{flow.EventOpen, flow.EventSample, flow.EventState, flow.EventClose} {
				n := bytes.Count(lines, []byte(`"event":"`+ev.String()+`"`))
				b.ReportMetric(float64(n)/conns, ev.String()+"/conn")
			}
			b.ReportMetric(recordsCounted(b, d)/conns, "records/conn")
		})
	}
}

// echoEach accepts connections on ln until it is closed, and on each reads
// n bytes, writes them back and closes it.
func echoEach(ln net.Listener, n int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			buf := make([]byte, n)
			if _, err := io.ReadFull(c, buf); err == nil {
				c.Write(buf)
				io.Copy(io.Discard, c) // until the client closes
			}
		}()
	}
}

func logged(hook *logtest.Hook, msg string) bool {
	for _, e := range hook.AllEntries() {
		if e.Message == msg && e.Level <= logrus.InfoLevel {
			return true
		}
	}
	return false
}
