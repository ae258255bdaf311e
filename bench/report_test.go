package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

func sampleResults() *Results {
	return &Results{
		Machine:  Machine{Nproc: 2, Kernel: "6.18.0", CPU: "Test CPU", Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)},
		Settings: Settings{Pairs: 2, IperfSecs: 3, Windows: 5, WindowSec: 2, Active: 16, MemFlows: 10000, Conns: 1000, SpreadSec: 5},
		Sections: []Section{{"1. cost", 200}, {"3. scale", 100}},
		Overhead: []OverheadRow{
			{Name: "ebpf-poll-1s", Config: "backends: [ebpf]", Target: 0.99, CostTarget: 0.005, Cost: Summary{N: 2, Median: 0.004},
				Command:  "sudo go run ./bench -run '^overhead/ebpf-poll-1s$'",
				BaseGbps: []float64{30, 32}, WithGbps: []float64{29.9, 32.1},
				Ratio: Summarize(Ratios([]float64{30, 32}, []float64{29.9, 32.1})), RatioCILo: 0.997, RatioCIHi: 1.003, RatioCICov: 0.5,
				Accounted: Summary{N: 2, Median: 0.995, Min: 0.994, Max: 0.996}},
			{Name: "ebpf-poll-0s", Config: "backends: [ebpf], ebpf.interval: 0s", Target: 0.97, CostTarget: 0.03, Cost: Summary{N: 2, Median: 0.031},
				Ratio: Summary{N: 2, Median: 0.99, Min: 0.94, Max: 1.04}, RatioCILo: 0.94, RatioCIHi: 1.04,
				Accounted: Summary{N: 2, Median: 0.95, Min: 0.94, Max: 0.96},
				BPFCPU:    Summary{N: 2, Median: 0.024}, BPFRuns: Summary{N: 2, Median: 27000}, BPFNsRun: Summary{N: 2, Median: 900}},
			{Name: "ebpf-transition", Config: "backends: [ebpf], ebpf.mode: transition", Target: 0.99,
				Ratio: Summary{N: 2, Median: 0.95, Min: 0.94, Max: 0.96}, RatioCILo: 0.94, RatioCIHi: 0.96,
				Accounted: Summary{N: 2, Median: 0.999, Min: 0.999, Max: 0.999}},
			{Name: "netlink-1s", Config: "backends: [netlink]", Ratio: Summary{N: 2, Median: 1.0, Min: 0.99, Max: 1.01}},
		},
		GoBench: &GoBench{Command: "go test", Checks: benchChecks(nil, "go test")},
		Scale: []ScaleRow{
			{N: 0, EBPFCPU: Summary{N: 5, Median: 0.004}, EBPFBPF: Summary{N: 5, Median: 0.001}, NetlinkCPU: Summary{N: 5, Median: 0.002}},
			{N: 1000, EBPFCPU: Summary{N: 3, Median: 0.0045}, EBPFBPF: Summary{N: 3, Median: 0.001}, EBPFGrowth: Summary{N: 3, Median: 1.1, Min: 0.9, Max: 1.3},
				NetlinkCPU: Summary{N: 5, Median: 0.006}},
			{N: 30000, EBPFCPU: Summary{N: 3, Median: 0.009}, EBPFBPF: Summary{N: 3, Median: 0.001}, EBPFGrowth: Summary{N: 3, Median: 2, Min: 1.9, Max: 2.1},
				NetlinkCPU: Summary{N: 5, Median: 0.1}},
		},
		Memory: []MemoryRow{
			{Backend: "ebpf", Flows: 10000, HWMKB: 30000, RSSKB: 29000, Maps: []MapMem{{"events", "RingBuf", 4223304}}, MapsBytes: 4223304,
				Cost: Summary{N: 5, Median: 0.003}},
			{Backend: "netlink", Flows: 10000, HWMKB: 60000, RSSKB: 59000},
		},
		Latency: &LatencyRow{Conns: 1000, P50Ms: 100, P99Ms: 199, MaxMs: 204},
		Churn: &ChurnRow{Name: churnRowName, Config: "backends: [ebpf]", Target: targetChurnRatio, Clients: 32, Size: 4096, Seconds: 3,
			BaseConnsPerSec: []float64{9000, 10000}, WithConnsPerSec: []float64{8500, 9000},
			Ratio: Summary{N: 2, Median: 0.922, Min: 0.9, Max: 0.944}, RatioCILo: 0.9, RatioCIHi: 0.944, RatioCICov: 0.5,
			Accounted:      Summary{N: 2, Median: 0.91, Min: 0.9, Max: 0.92},
			RecordsPerConn: Summary{N: 2, Median: 10, Min: 10, Max: 10}, BytesPerConn: Summary{N: 2, Median: 6984, Min: 6983, Max: 6985},
			EventsPerConn: map[string]float64{"open": 2, "state": 6, "close": 2},
			BytesPerLine:  map[string]float64{"open": 1351, "state": 255, "close": 1373}},
	}
}

// row returns the table line of the targets table that contains s.
func targetLine(t *testing.T, md, s string) string {
	t.Helper()
	_, tail, ok := strings.Cut(md, "## Targets")
	if !ok {
		t.Fatal("no targets table")
	}
	table, _, _ := strings.Cut(tail, "\n## ")
	for _, l := range strings.Split(table, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	t.Fatalf("no targets line with %q in:\n%s", s, table)
	return ""
}

func TestRenderTargets(t *testing.T) {
	md := Render(sampleResults())
	for _, tt := range []struct{ line, result string }{
		{"throughput with flowd / without, ebpf-poll-1s", "**pass**"},
		{"throughput with flowd / without, ebpf-poll-0s", "**FAIL**"}, // accounted below the target, whatever was measured
		{"(f + b), ebpf-poll-1s", "**pass**"},                         // 0.004 ≤ 0.005
		{"(f + b), ebpf-poll-0s", "**FAIL**"},                         // 0.031 > 0.03
		{"10000 tracked idle flows", "**pass**"},
		{"ebpf-transition", "**FAIL**"}, // measured significantly below
		{"N=1000", "**pass**"},          // (0.0045+0.001)/(0.004+0.001) = 1.1
		{"N=30000", "**FAIL**"},         // 2.0
		{"ebpf, 10000 flows", "**pass**"},
		{"netlink, 10000 flows", "**FAIL**"}, // 61.4 MB
		{"p99", "**pass**"},
		{"DecodeEncode: time per record", "pending"},
		{"short connections/s", "**pass**"},
		{"Pipeline", "pending"},
	} {
		if l := targetLine(t, md, tt.line); !strings.HasSuffix(strings.TrimSpace(l), tt.result+" |") {
			t.Errorf("targets line %q: want result %s", l, tt.result)
		}
	}
	if strings.Contains(targetLine(t, md, "1 |"), "netlink-1s") {
		t.Error("netlink rows have no target and belong in section 1 only")
	}
}

func TestChurnVerdict(t *testing.T) {
	row := func(median, ciHi, accounted float64, drops uint64, missing int) *ChurnRow {
		return &ChurnRow{Target: targetChurnRatio, Ratio: Summary{N: 6, Median: median}, RatioCIHi: ciHi,
			Accounted: Summary{N: 6, Median: accounted}, Drops: drops, Missing: missing}
	}
	for _, tt := range []struct {
		name string
		r    *ChurnRow
		want string
	}{
		{"reaches it, nothing lost", row(0.93, 1.0, 0.92, 0, 0), "**pass**"},
		{"below, within the noise", row(0.88, 0.95, 0.92, 0, 0), "**not shown**"},
		{"significantly below", row(0.8, 0.85, 0.92, 0, 0), "**FAIL**"},
		{"accounted below", row(1.0, 1.1, 0.85, 0, 0), "**FAIL**"},
		{"records dropped", row(0.95, 1.0, 0.92, 3, 0), "**FAIL**"},
		{"close records missing", row(0.95, 1.0, 0.92, 0, 2), "**FAIL**"},
		{"not measured", &ChurnRow{Target: targetChurnRatio}, "—"},
	} {
		if got := churnVerdict(tt.r); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestOverheadResult(t *testing.T) {
	row := func(measured, ciHi, accounted float64) OverheadRow {
		return OverheadRow{Target: 0.97, Ratio: Summary{N: 10, Median: measured}, RatioCIHi: ciHi,
			Accounted: Summary{N: 10, Median: accounted}}
	}
	for _, tt := range []struct {
		name string
		r    OverheadRow
		want string
	}{
		{"both reach it", row(0.975, 0.99, 0.98), "**pass**"},
		{"measured median below, within the noise", row(0.862, 0.988, 0.9721), "**not shown**"},
		{"measured significantly below", row(0.90, 0.95, 0.98), "**FAIL**"},
		{"accounted below", row(1.01, 1.05, 0.96), "**FAIL**"},
		{"no target", OverheadRow{Ratio: Summary{N: 10, Median: 1}}, "—"},
		{"not measured", OverheadRow{Target: 0.97}, "—"},
	} {
		if got := overheadResult(tt.r); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestRenderSections(t *testing.T) {
	md := Render(sampleResults())
	for _, want := range []string{
		"# flowd benchmarks",
		"| CPUs (`nproc`) | 2 |",
		"| kernel | 6.18.0 |",
		"**total 300 s**",
		"## 1. Cost to the monitored traffic",
		"| ebpf-poll-1s | `backends: [ebpf]` | 1.000 (0.997–1.003) | 0.997–1.003 (50%) | 0.9950 (0.9940–0.9960) | ≥ 0.99 | **pass** |",
		"| 27000, 900 |",
		"`sudo go run ./bench -run '^overhead/ebpf-poll-1s$'`",
		"## 2. User-space cost per record",
		"Command: `go test`",
		"## 3. Scale with unrelated sockets",
		"| 0 | 0 | 0.0040 (0.0000–0.0000) |",
		"| 1000 | 0 | 0.0045 (0.0000–0.0000) | 0.00100 (0.00000–0.00000) | 1.10 (0.90–1.30) | within ±20% | **pass** | 0.0060 (0.0000–0.0000) | 3.0× |",
		"## 4. Memory",
		"| events | RingBuf | 4223304 B |",
		"## 5. Delivery latency",
		"| 1000 | 100.0 ms | 199.0 ms | 204.0 ms |",
		"## 6. Short connections",
		"| 9500 (9000–10000) | 8750 (8500–9000) | 0.922 (0.900–0.944) |",
		"| state | 6.00 | 255 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(md, "Quick smoke run") {
		t.Error("a full run is marked quick")
	}
	// The report is tables and commands; what they mean is in methodDoc.
	if !strings.Contains(md, "[docs/performance.md](docs/performance.md)") {
		t.Error("the report does not link to the method")
	}
	if strings.Contains(md, "## Analysis") || strings.Contains(md, "Every pair, in order") {
		t.Error("the report holds prose that belongs in docs/performance.md")
	}
	res := sampleResults()
	res.Settings.Quick = true
	if !strings.Contains(Render(res), "Quick smoke run") {
		t.Error("a quick run is not marked")
	}
}

func TestRenderErrors(t *testing.T) {
	res := &Results{
		Overhead: []OverheadRow{{Name: "ebpf-poll-1s", Target: 0.99, Err: "pair 1, B: flowd exited | badly"},
			{Name: "ebpf-poll-0s", Target: 0.97, Drops: 12}},
		GoBench: &GoBench{Command: "go test", Err: "exit status 1", Output: "--- FAIL: BenchmarkPipeline\n"},
		Latency: &LatencyRow{Conns: 10, Missing: 3, P99Ms: 100},
	}
	md := Render(res)
	if !strings.Contains(md, `error: pair 1, B: flowd exited \| badly`) {
		t.Errorf("the error is not in the table, escaped:\n%s", md)
	}
	if !strings.Contains(md, "ebpf-poll-0s: 12 records dropped in the B runs.") {
		t.Errorf("drops are not reported:\n%s", md)
	}
	if !strings.Contains(md, "`go test` failed (exit status 1):\n\n```\n--- FAIL: BenchmarkPipeline\n```\n") {
		t.Errorf("the benchmarks' failure is not shown:\n%s", md)
	}
	if l := targetLine(t, md, "p99"); !strings.Contains(l, "**FAIL**") {
		t.Errorf("missing close records must fail the latency target: %q", l)
	}
	if l := targetLine(t, md, "ebpf-poll-1s"); !strings.Contains(l, "—") {
		t.Errorf("a row without measurements has no result: %q", l)
	}
}

func TestResultsJSON(t *testing.T) {
	b, err := json.Marshal(sampleResults())
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if Render(&back) != Render(sampleResults()) {
		t.Error("results do not survive a JSON round trip")
	}
}

func TestSectionRender(t *testing.T) {
	s := &section{
		title:  "9. Example",
		method: "How it was measured.",
		tables: []table{
			{header: []string{"a", "b"}, rows: [][]string{{"1", "2"}, {"3", "4"}}},
			{caption: "More:", header: []string{"c"}, rows: [][]string{{"5"}}},
		},
		command: "sudo go run ./bench -run '^example$'",
		notes:   []string{"A note."},
	}
	var b strings.Builder
	s.render(func(format string, args ...any) { fmt.Fprintf(&b, format, args...) })
	want := "## 9. Example\n\nHow it was measured.\n\n" +
		"| a | b |\n| --- | --- |\n| 1 | 2 |\n| 3 | 4 |\n\n" +
		"More:\n\n| c |\n| --- |\n| 5 |\n\n" +
		"Command: `sudo go run ./bench -run '^example$'`\n\nA note.\n\n"
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

// TestRenderCommitted checks that BENCHMARKS.md is what the renderer makes
// of bench/results.json, so that neither is edited by hand.
func TestRenderCommitted(t *testing.T) {
	res, err := loadResults("results.json")
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../BENCHMARKS.md")
	if err != nil {
		t.Fatal(err)
	}
	if got := Render(res); got != string(want) {
		t.Error("BENCHMARKS.md is not the rendering of bench/results.json: run 'go run ./bench -render bench/results.json -md BENCHMARKS.md'")
	}
}
