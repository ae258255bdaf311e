package main

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
)

func TestParseBenchOutput(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: github.com/flowd/flowd/backends/ebpf
BenchmarkDecodeEncode-2   	 1458236	       812.5 ns/op	     0 B/op	       0 allocs/op
BenchmarkPipeline/records-2  	      10	 101234567 ns/op	   612345 records/s	         0 drops
BenchmarkBroken-2  abc  1 ns/op
--- FAIL: BenchmarkOther
PASS
ok  	github.com/flowd/flowd/backends/ebpf	3.1s
`
	lines := parseBenchOutput(out)
	if len(lines) != 2 {
		t.Fatalf("parsed %d lines, want 2: %+v", len(lines), lines)
	}
	d := lines[0]
	if d.Name != "BenchmarkDecodeEncode-2" || d.Iters != 1458236 || d.Metrics["ns/op"] != 812.5 || d.Metrics["allocs/op"] != 0 {
		t.Errorf("first line = %+v", d)
	}
	if p := lines[1]; p.Metrics["records/s"] != 612345 || p.Metrics["drops"] != 0 {
		t.Errorf("second line = %+v", p)
	}
}

func TestBenchChecks(t *testing.T) {
	t.Run("pending", func(t *testing.T) {
		checks := benchChecks(nil, "cmd")
		if len(checks) != 3 {
			t.Fatalf("%d checks, want 3 pending ones", len(checks))
		}
		for _, c := range checks {
			if c.Pass != nil || !strings.HasPrefix(c.Value, "pending") {
				t.Errorf("check %+v is not pending", c)
			}
		}
	})
	t.Run("measured", func(t *testing.T) {
		lines := parseBenchOutput("BenchmarkDecodeEncode-2 100 1200 ns/op 0 B/op 1 allocs/op\n" +
			"BenchmarkPipeline/rate=500k-2 1 5 ns/op 499500 records/s 0 drops 0 lost\n" +
			"BenchmarkPipeline/rate=max-2 1 5 ns/op 650000 records/s 3 drops 0 lost\n")
		got := map[string]bool{}
		for _, c := range benchChecks(lines, "cmd") {
			if c.Pass == nil {
				t.Fatalf("check %+v has no result", c)
			}
			got[c.Figure] = *c.Pass
		}
		want := map[string]bool{
			"DecodeEncode-2: time per record":                  false,
			"DecodeEncode-2: allocations per record":           true,
			"Pipeline: sustained rate on one core, zero drops": true, // 499.5k without drops; 650k had drops
		}
		for k, v := range want {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("check %q = %v (present %v), want %v; all: %v", k, g, ok, v, got)
			}
		}
	})
	t.Run("drops everywhere", func(t *testing.T) {
		lines := parseBenchOutput("BenchmarkPipeline/rate=max-2 1 5 ns/op 650000 records/s 3 drops 0 lost\n" +
			"BenchmarkPipeline/rate=250k-2 1 5 ns/op 250000 records/s 0 drops 0 lost\n")
		for _, c := range benchChecks(lines, "cmd") {
			if strings.HasPrefix(c.Figure, "Pipeline") && (c.Pass == nil || *c.Pass || !strings.Contains(c.Value, "rate=250k")) {
				t.Errorf("check %+v: want a failure naming rate=250k, the best line without drops", c)
			}
		}
		lines = parseBenchOutput("BenchmarkPipeline/rate=250k-2 1 5 ns/op 246000 records/s 13492 drops 0 lost\n" +
			"BenchmarkPipeline/rate=500k-2 1 5 ns/op 498000 records/s 739 drops 0 lost\n" +
			"BenchmarkPipeline/rate=800k-2 1 5 ns/op 672000 records/s 382669 drops 0 lost\n")
		for _, c := range benchChecks(lines, "cmd") {
			if strings.HasPrefix(c.Figure, "Pipeline") && (c.Pass == nil || *c.Pass || !strings.Contains(c.Value, "dropped 739")) {
				t.Errorf("check %+v: want a failure naming the closest line and its drops", c)
			}
		}
	})
	t.Run("kinds of lines", func(t *testing.T) {
		// One check per kind, each on its own lines only: the full lines'
		// drops at 500k do not touch the partial lines' result, and the full
		// lines are reported, not judged.
		lines := parseBenchOutput("BenchmarkPipeline/samples=changes/rate=500k-2 1 5 ns/op 499900 records/s 0 drops 0 lost\n" +
			"BenchmarkPipeline/samples=changes/rate=max-2 1 5 ns/op 1100000 records/s 0 drops 0 lost 600 consumer-ns/record\n" +
			"BenchmarkPipeline/samples=full/rate=500k-2 1 5 ns/op 470000 records/s 1200 drops 0 lost\n" +
			"BenchmarkPipeline/samples=full/rate=max-2 1 5 ns/op 480000 records/s 0 drops 0 lost\n")
		var pipeline []BenchCheck
		for _, c := range benchChecks(lines, "cmd") {
			if strings.HasPrefix(c.Figure, "Pipeline") {
				pipeline = append(pipeline, c)
			}
		}
		if len(pipeline) != 2 {
			t.Fatalf("Pipeline checks %+v, want one per kind of lines", pipeline)
		}
		if c := pipeline[0]; c.Figure != pipelineFigures["samples=changes"] || c.Pass == nil || !*c.Pass ||
			!strings.HasPrefix(c.Value, "1100000 records/s (Pipeline/samples=changes/rate=max-2") || !strings.Contains(c.Value, "600 consumer-ns/record") {
			t.Errorf("partial lines: %+v", c)
		}
		if c := pipeline[1]; c.Figure != pipelineFigures["samples=full"] || !c.Info || checkCell(c) != "—" || c.Pass == nil || *c.Pass ||
			!strings.HasPrefix(c.Value, "480000 records/s (Pipeline/samples=full/rate=max-2: 1 of 1 runs without drops)") {
			t.Errorf("complete lines: %+v", c)
		}
	})
	t.Run("repeated runs", func(t *testing.T) {
		// go test -count 3: each benchmark three times in a row.
		lines := parseBenchOutput("BenchmarkDecodeEncode-2 100 900 ns/op 0 allocs/op\n" +
			"BenchmarkDecodeEncode-2 100 1500 ns/op 0 allocs/op\n" +
			"BenchmarkDecodeEncode-2 100 700 ns/op 0 allocs/op\n" +
			"BenchmarkPipeline/rate=250k-2 1 5 ns/op 249000 records/s 0 drops 0 lost 1000 consumer-ns/record\n" +
			"BenchmarkPipeline/rate=250k-2 1 5 ns/op 249500 records/s 0 drops 0 lost 1100 consumer-ns/record\n" +
			"BenchmarkPipeline/rate=250k-2 1 5 ns/op 249900 records/s 0 drops 0 lost 1200 consumer-ns/record\n" +
			"BenchmarkPipeline/rate=500k-2 1 5 ns/op 499000 records/s 9043 drops 0 lost 1350 consumer-ns/record\n" +
			"BenchmarkPipeline/rate=500k-2 1 5 ns/op 499600 records/s 0 drops 0 lost 1050 consumer-ns/record\n" +
			"BenchmarkPipeline/rate=500k-2 1 5 ns/op 499200 records/s 0 drops 0 lost 1150 consumer-ns/record\n" +
			"BenchmarkPipeline/rate=600k-2 1 5 ns/op 590000 records/s 10 drops 0 lost\n" +
			"BenchmarkPipeline/rate=600k-2 1 5 ns/op 598000 records/s 0 drops 0 lost\n" +
			"BenchmarkPipeline/rate=600k-2 1 5 ns/op 591000 records/s 20 drops 0 lost\n")
		byFigure := map[string]BenchCheck{}
		for _, c := range benchChecks(lines, "cmd") {
			byFigure[c.Figure] = c
		}
		if c := byFigure["DecodeEncode-2: time per record"]; c.Pass == nil || !*c.Pass || !strings.HasPrefix(c.Value, "900 ns/op (median of 3 runs") {
			t.Errorf("DecodeEncode: %+v, want the median (900 ns) passing", c)
		}
		// 500k: two clean runs of three (one disturbed run does not decide),
		// their median rate; 600k: one clean run of three is not sustained.
		c := byFigure["Pipeline: sustained rate on one core, zero drops"]
		if c.Pass == nil || !*c.Pass || !strings.HasPrefix(c.Value, "499400 records/s (Pipeline/rate=500k-2: 2 of 3 runs without drops, the others dropped 9043)") ||
			!strings.Contains(c.Value, "1100 consumer-ns/record") {
			t.Errorf("Pipeline: %+v", c)
		}
		// The same at 500k with two disturbed runs of three fails.
		lines[7].Metrics["drops"] = 5
		c = benchChecks(lines, "cmd")[2]
		if c.Pass == nil || *c.Pass || !strings.Contains(c.Value, "rate=250k") || !strings.Contains(c.Value, "next: Pipeline/rate=500k-2: 1 of 3 runs") {
			t.Errorf("Pipeline with 500k mostly dropping: %+v", c)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		lines := parseBenchOutput("BenchmarkMetricsPath/cgroups-2 1000 180 ns/op 92.5 cpu-ns/op 0 B/op 0 allocs/op\n" +
			"BenchmarkMetricsPath/cgroups+by+per_flow-2 1000 130 ns/op 0 B/op 0 allocs/op\n" +
			"BenchmarkScrape-2 30 31000000 ns/op 290000 B/op 1500 allocs/op\n")
		got := map[string]bool{}
		for _, c := range metricsChecks(lines, "cmd") {
			if c.Pass == nil {
				t.Fatalf("check %+v has no result", c)
			}
			got[c.Figure+" = "+c.Value] = *c.Pass
		}
		if checks := metricsChecks(nil, "cmd"); len(checks) != 2 || checks[0].Pass != nil || checks[1].Pass != nil {
			t.Errorf("checks without lines %+v, want 2 pending", checks)
		}
		want := map[string]bool{
			"MetricsPath/cgroups-2: what the metrics add per record = 92 cpu-ns/op":          true,
			"MetricsPath/cgroups+by+per_flow-2: what the metrics add per record = 130 ns/op": false,
			"Scrape-2: a scrape of 1,000 cgroups = 31.0 ms":                                  true,
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("checks %v, want %v", got, want)
		}
	})
	t.Run("per-record metrics win", func(t *testing.T) {
		lines := parseBenchOutput("BenchmarkDecodeEncode/batch-2 100 64000 ns/op 640 ns/record 0.5 allocs/record 64 allocs/op\n")
		for _, c := range benchChecks(lines, "cmd") {
			if !strings.HasPrefix(c.Figure, "DecodeEncode") {
				continue // the pipeline is pending here
			}
			if c.Pass == nil || !*c.Pass {
				t.Errorf("check %+v should pass on its per-record metric", c)
			}
		}
	})
}

func TestOTLPChecks(t *testing.T) {
	for _, c := range otlpChecks(nil, "cmd") {
		if c.Pass != nil || !strings.HasPrefix(c.Value, "pending") {
			t.Errorf("check %+v is not pending", c)
		}
	}
	lines := parseBenchOutput("BenchmarkExport/grpc/none-2 200000 12000 ns/op 1900 cpu-ns/record 700 sys-ns/record 80000 records/s 0 drops 0 lost\n" +
		"BenchmarkExport/grpc/none-2 200000 12000 ns/op 2300 cpu-ns/record 800 sys-ns/record 80000 records/s 0 drops 0 lost\n" +
		"BenchmarkExport/grpc/none-2 200000 12000 ns/op 1950 cpu-ns/record 750 sys-ns/record 80000 records/s 0 drops 0 lost\n" +
		"BenchmarkSustained/rate=100k-2 300000 10000 ns/op 100010 records/s 0 drops 0 lost\n" +
		"BenchmarkSustained/rate=100k-2 300000 10000 ns/op 99990 records/s 0 drops 0 lost\n" +
		"BenchmarkSustained/rate=100k-2 300000 10000 ns/op 97000 records/s 8000 drops 0 lost\n" +
		"BenchmarkSustained/rate=200k-2 300000 10000 ns/op 130000 records/s 90000 drops 0 lost\n")
	checks := otlpChecks(lines, "cmd")
	if len(checks) != 2 {
		t.Fatalf("%d checks, want 2", len(checks))
	}
	for i, want := range []struct {
		pass  bool
		value string
	}{{true, "1950 ns"}, {true, "100000 records/s (Sustained/rate=100k-2: 2 of 3 runs without drops"}} {
		c := checks[i]
		if c.Pass == nil || *c.Pass != want.pass || !strings.HasPrefix(c.Value, want.value) {
			t.Errorf("check %+v: want pass %v and a value starting %q", c, want.pass, want.value)
		}
	}
	lines = parseBenchOutput("BenchmarkSustained/rate=100k-2 300000 10000 ns/op 90000 records/s 30000 drops 0 lost\n")
	if c := otlpChecks(lines, "cmd")[1]; c.Pass == nil || *c.Pass {
		t.Errorf("check %+v: want a failure", c)
	}
}

func TestParseCPUStat(t *testing.T) {
	got, err := parseCPUStat([]byte("usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n"))
	if err != nil || got != 1234567*time.Microsecond {
		t.Errorf("parseCPUStat = %v, %v", got, err)
	}
	if _, err := parseCPUStat([]byte("user_usec 1\n")); err == nil {
		t.Error("parseCPUStat without usage_usec: no error")
	}
}

func TestParseStatus(t *testing.T) {
	status := "Name:\tflowd\nVmPeak:\t 1262984 kB\nVmHWM:\t   29040 kB\nVmRSS:\t   28936 kB\nThreads:\t7\n"
	hwm, rss, err := parseStatus([]byte(status))
	if err != nil || hwm != 29040 || rss != 28936 {
		t.Errorf("parseStatus = %d, %d, %v", hwm, rss, err)
	}
	if _, _, err := parseStatus([]byte("Name:\tx\n")); err == nil {
		t.Error("parseStatus without VmHWM: no error")
	}
}

func TestParseSockstat(t *testing.T) {
	s := "sockets: used 120\nTCP: inuse 60050 orphan 0 tw 3 alloc 60052 mem 12\nUDP: inuse 2 mem 1\n"
	if got := parseSockstat(s); got != 60050 {
		t.Errorf("parseSockstat = %d, want 60050", got)
	}
	if got := parseSockstat("UDP: inuse 2\n"); got != -1 {
		t.Errorf("parseSockstat without TCP = %d, want -1", got)
	}
}

func TestParseProcStat(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	s := "cpu  100 2 30 5000 7 1 4 0 9 0\ncpu0 50 1 15 2500 3 0 2 0 0 0\n"
	got, err := parseProcStat(s)
	if want := 137 * time.Second / userHZ; err != nil || got != want {
		t.Errorf("parseProcStat = %v, %v; want %v", got, err, want)
	}
	if _, err := parseProcStat("intr 1 2 3\n"); err == nil {
		t.Error("parseProcStat of a bad line: no error")
	}
}

func TestParseIperf(t *testing.T) {
	r, err := parseIperf([]byte(`{"start":{},"end":{"sum_received":{"bytes":1.25e10,"bits_per_second":3.3e10}}}`))
	if err != nil || r.Gbps != 33 || r.Bytes != 1.25e10 {
		t.Errorf("parseIperf = %+v, %v", r, err)
	}
	if _, err := parseIperf([]byte(`{"error":"unable to connect"}`)); err == nil || !strings.Contains(err.Error(), "unable to connect") {
		t.Errorf("parseIperf of an error report: %v", err)
	}
	if _, err := parseIperf([]byte(`not json`)); err == nil {
		t.Error("parseIperf of garbage: no error")
	}
}

func TestFlowdConfigYAML(t *testing.T) {
	tests := []struct {
		cfg  flowdConfig
		keys string
		yaml string
	}{
		{flowdConfig{Backend: "ebpf"}, "backends: [ebpf]",
			"backends: [ebpf]\ncgroup: \"/cg\"\noutput:\n  path: \"/o.jsonl\"\n"},
		{flowdConfig{Backend: "ebpf", IntervalSet: true}, "backends: [ebpf], ebpf.interval: 0s",
			"backends: [ebpf]\ncgroup: \"/cg\"\nebpf:\n  interval: 0s\noutput:\n  path: \"/o.jsonl\"\n"},
		{flowdConfig{Backend: "ebpf", Mode: "transition"}, "backends: [ebpf], ebpf.mode: transition",
			"backends: [ebpf]\ncgroup: \"/cg\"\nebpf:\n  mode: transition\noutput:\n  path: \"/o.jsonl\"\n"},
		{flowdConfig{Backend: "netlink", NetlinkInterval: 100 * time.Millisecond}, "backends: [netlink], netlink.interval: 100ms",
			"backends: [netlink]\ncgroup: \"/cg\"\nnetlink:\n  interval: 100ms\noutput:\n  path: \"/o.jsonl\"\n"},
		{flowdConfig{Backend: "ebpf", Members: []string{"rtt", "snd_cwnd"}}, "backends: [ebpf], output.tcp_info: [rtt, snd_cwnd]",
			"backends: [ebpf]\ncgroup: \"/cg\"\noutput:\n  path: \"/o.jsonl\"\n  tcp_info: [rtt, snd_cwnd]\n"},
		{flowdConfig{Backend: "ebpf", OTLP: "127.0.0.1:4317"}, "backends: [ebpf], output.otlp.endpoint: a collector on loopback",
			"backends: [ebpf]\ncgroup: \"/cg\"\noutput:\n  path: \"/o.jsonl\"\n  otlp:\n    endpoint: \"127.0.0.1:4317\"\n"},
	}
	for _, tt := range tests {
		if got := tt.cfg.Keys(); got != tt.keys {
			t.Errorf("Keys() = %q, want %q", got, tt.keys)
		}
		if got := tt.cfg.YAML("/cg", "/o.jsonl"); got != tt.yaml {
			t.Errorf("YAML() = %q, want %q", got, tt.yaml)
		}
	}
}

// TestCCMembers: the member list of the ebpf-poll-0s-members row names
// members flowd knows, each once.
func TestCCMembers(t *testing.T) {
	seen := map[flow.Field]bool{}
	for _, name := range ccMembers {
		f, ok := flow.FieldByName(name)
		if !ok || seen[f] {
			t.Errorf("%q: unknown or listed twice", name)
		}
		seen[f] = true
	}
}

func TestParseOptionsQuick(t *testing.T) {
	o, err := parseOptions([]string{"-quick", "-pairs", "3"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if o.pairs != 3 || o.iperfSecs != 1 || o.memFlows != 200 || len(o.scaleNs) != 2 {
		t.Errorf("quick options = %+v: explicit -pairs must win, the rest be small", o)
	}
	if _, err := parseOptions([]string{"-scale", "1,x"}, &strings.Builder{}); err == nil {
		t.Error("-scale 1,x: no error")
	}
	if _, err := parseOptions([]string{"-run", "("}, &strings.Builder{}); err == nil {
		t.Error("-run '(': no error")
	}
}
