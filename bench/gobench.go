package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// goBenchRuns are section 2's go test runs: the per-record benchmarks of
// the ebpf backend, those of the OTLP exporter into a real collector
// (gRPC, the default, with and without gzip, and the rates offered around
// the target), and the metrics' cost per record and per scrape.
var goBenchRuns = []struct{ pattern, pkg string }{
	{"DecodeEncode|Pipeline", "./backends/ebpf/"},
	{"^Benchmark(Export|Sustained)$/^(grpc|rate=100k|rate=200k)$", "./otlp/"},
	{"MetricsPath|^BenchmarkScrape$", "./metrics/"},
}

// Section 2 targets.
const (
	targetNsPerRecord        = 1000
	targetAllocsPerRecord    = 1
	targetRecordsPerSec      = 500_000
	targetOTLPCPUPerRecord   = 2000 // ns
	targetOTLPRecordsPerSec  = 100_000
	targetMetricsNsPerRecord = 100 // what the metrics add to each record
	targetScrapeMs           = 50  // a scrape of the TCP metrics of 1,000 cgroups
)

// goBench runs section 2: go test -bench in the repository, once per
// package.
func (s *suite) goBench(ctx context.Context) *GoBench {
	g := &GoBench{}
	var commands []string
	lines := make([][]BenchLine, len(goBenchRuns)) // by run
	for i, run := range goBenchRuns {
		args := []string{"test", "-run", "^$", "-bench", run.pattern, "-benchmem"}
		if s.opts.benchtime != "" {
			args = append(args, "-benchtime", s.opts.benchtime)
		}
		if s.opts.benchCount > 1 {
			args = append(args, "-count", strconv.Itoa(s.opts.benchCount))
		}
		args = append(args, run.pkg)
		commands = append(commands, "sudo go "+strings.Join(quoteArgs(args), " "))
		cmd := exec.CommandContext(ctx, s.opts.goCmd, args...)
		cmd.Dir = s.opts.repo
		cmd.Env = os.Environ()
		out, err := cmd.CombinedOutput()
		lines[i] = parseBenchOutput(string(out))
		g.Lines = append(g.Lines, lines[i]...)
		if err != nil && g.Err == "" {
			g.Err = err.Error()
			g.Output = lastLines(string(out), 20)
		}
		for _, l := range lines[i] {
			s.logf("  %s", l.Raw)
		}
	}
	g.Command = strings.Join(commands, " && ")
	g.Checks = goBenchChecks(g.Lines, g.Command)
	return g
}

// goBenchChecks are section 2's checks of every package's lines: each
// check picks the benchmarks it judges by name.
func goBenchChecks(lines []BenchLine, command string) []BenchCheck {
	checks := append(benchChecks(lines, command), otlpChecks(lines, command)...)
	return append(checks, metricsChecks(lines, command)...)
}

// parseBenchOutput returns the result lines of go test -bench output:
// "BenchmarkName-2  1000  812 ns/op  64 B/op  1 allocs/op  1.2e6 records/s".
func parseBenchOutput(out string) []BenchLine {
	var lines []BenchLine
	for _, raw := range strings.Split(out, "\n") {
		f := strings.Fields(raw)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		iters, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		l := BenchLine{Name: f[0], Iters: iters, Metrics: map[string]float64{}, Raw: strings.Join(f, " ")}
		ok := true
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				ok = false
				break
			}
			l.Metrics[f[i+1]] = v
		}
		if ok {
			lines = append(lines, l)
		}
	}
	return lines
}

// benchChecks checks section 2's targets against the benchmark lines,
// which hold each benchmark once per run (go test -count). DecodeEncode:
// the median over the runs of the time and the allocations per record (a
// custom ns/record or allocs/record metric when reported, else per op, an
// op being one record). Pipeline: each sub-benchmark (an offered rate) is
// sustained when most of its runs dropped and lost nothing; the figure is
// the median records/s of those runs at the highest sustained rate, which
// must reach the target rate within 1% (a line offered exactly 500k
// records/s sustains it at 499k). One run that other jobs of the host
// disturb does not decide. A target with no line is pending.
func benchChecks(lines []BenchLine, command string) []BenchCheck {
	names, runs := byName(lines)

	var checks []BenchCheck
	var sawDecode bool
	var kinds []string // of Pipeline lines, in order
	pipeline := map[string][]rateRuns{}
	for _, name := range names {
		short := strings.TrimPrefix(name, "Benchmark")
		switch {
		case strings.HasPrefix(short, "DecodeEncode"):
			sawDecode = true
			if v, u, spread, ok := medianMetric(runs[name], "ns/record", "ns/op"); ok {
				checks = append(checks, BenchCheck{Figure: short + ": time per record", Value: fmt.Sprintf("%.0f %s%s", v, u, spread),
					Target: fmt.Sprintf("≤ %d ns", targetNsPerRecord), Pass: ptr(v <= targetNsPerRecord), Command: command})
			}
			if v, u, spread, ok := medianMetric(runs[name], "allocs/record", "allocs/op"); ok {
				checks = append(checks, BenchCheck{Figure: short + ": allocations per record", Value: fmt.Sprintf("%g %s%s", v, u, spread),
					Target: fmt.Sprintf("≤ %d", targetAllocsPerRecord), Pass: ptr(v <= targetAllocsPerRecord), Command: command})
			}
		case strings.HasPrefix(short, "Pipeline"):
			kind := pipelineKind(short)
			if _, ok := pipeline[kind]; !ok {
				kinds = append(kinds, kind)
			}
			pipeline[kind] = append(pipeline[kind], newRateRuns(short, runs[name]))
		}
	}
	if !sawDecode {
		checks = append(checks,
			BenchCheck{Figure: "DecodeEncode: time per record", Value: "pending (no BenchmarkDecodeEncode yet)", Target: fmt.Sprintf("≤ %d ns", targetNsPerRecord), Command: command},
			BenchCheck{Figure: "DecodeEncode: allocations per record", Value: "pending (no BenchmarkDecodeEncode yet)", Target: fmt.Sprintf("≤ %d", targetAllocsPerRecord), Command: command})
	}
	if len(kinds) == 0 {
		return append(checks, pipelineCheck("", nil, command))
	}
	for _, kind := range kinds {
		checks = append(checks, pipelineCheck(kind, pipeline[kind], command))
	}
	return checks
}

// pipelineKind is the lines a Pipeline sub-benchmark writes, the
// "samples=…" part of its name (Pipeline/samples=changes/rate=500k-2), or
// "" when it has none.
func pipelineKind(short string) string {
	for _, part := range strings.Split(short, "/") {
		if strings.HasPrefix(part, "samples=") {
			return part
		}
	}
	return ""
}

// pipelineFigures names the Pipeline checks by the lines written.
var pipelineFigures = map[string]string{
	"":                "Pipeline: sustained rate on one core, zero drops",
	"samples=changes": "Pipeline, partial sample lines (output.samples: changes): sustained rate on one core, zero drops",
	"samples=full":    "Pipeline, complete lines (output.samples: full, the default): sustained rate on one core, zero drops",
}

// pipelineInfo is the kinds of lines that are reported, not judged.
// Complete lines are ~1,400 bytes: 500,000 of them a second are ~700 MB/s
// to write, more than a typical disk sustains, and the daemon's
// write-behind keeps its output to what the disk sustains.
var pipelineInfo = map[string]bool{"samples=full": true}

// rateRuns is one Pipeline sub-benchmark (one offered rate) over its runs.
type rateRuns struct {
	name      string
	runs      int
	clean     []BenchLine // the runs that reported records/s, no drops and nothing lost
	rate      float64     // median records/s of the clean runs (of all runs when none is clean)
	drops     []float64   // drops + lost of each run that had some
	others    float64     // median others-cpu-% over the runs (-1: not reported)
	sustained bool        // most runs are clean
}

func newRateRuns(name string, lines []BenchLine) rateRuns {
	r := rateRuns{name: name, runs: len(lines), others: -1}
	var all, cleanRates, others []float64
	for _, l := range lines {
		rate, ok := l.Metrics["records/s"]
		if !ok {
			continue
		}
		all = append(all, rate)
		if o, ok := l.Metrics["others-cpu-%"]; ok {
			others = append(others, o)
		}
		if lost := l.Metrics["drops"] + l.Metrics["lost"]; lost != 0 {
			r.drops = append(r.drops, lost)
			continue
		}
		r.clean = append(r.clean, l)
		cleanRates = append(cleanRates, rate)
	}
	r.sustained = 2*len(r.clean) > r.runs
	r.rate = Summarize(all).Median
	if len(cleanRates) > 0 {
		r.rate = Summarize(cleanRates).Median
	}
	if len(others) > 0 {
		r.others = Summarize(others).Median
	}
	return r
}

func (r rateRuns) reaches() bool { return r.rate >= 0.99*targetRecordsPerSec }

// dropped is the records dropped or lost over all runs.
func (r rateRuns) dropped() float64 {
	var n float64
	for _, d := range r.drops {
		n += d
	}
	return n
}

// describe says how many runs were clean and what the others dropped.
func (r rateRuns) describe() string {
	s := fmt.Sprintf("%s: %d of %d runs without drops", r.name, len(r.clean), r.runs)
	if len(r.drops) > 0 {
		s += fmt.Sprintf(", the others dropped %s", joinFloats(r.drops))
	}
	if r.others >= 0 {
		s += fmt.Sprintf(", other jobs took %.0f%% of a CPU", r.others)
	}
	return s
}

// pipelineCheck is the Pipeline target's check over the offered rates of
// one kind of lines.
func pipelineCheck(kind string, rates []rateRuns, command string) BenchCheck {
	figure, ok := pipelineFigures[kind]
	if !ok {
		figure = fmt.Sprintf("Pipeline, %s: sustained rate on one core, zero drops", kind)
	}
	c := BenchCheck{Figure: figure, Target: fmt.Sprintf("≥ %d records/s, 0 drops", targetRecordsPerSec), Command: command}
	if pipelineInfo[kind] {
		c.Info = true
		c.Target = fmt.Sprintf("— (information: ~%d MB/s of lines at %d records/s)", targetRecordsPerSec*1400/1_000_000, targetRecordsPerSec)
	}
	if len(rates) == 0 {
		c.Value = "pending (no BenchmarkPipeline yet)"
		return c
	}
	best := -1
	for i, r := range rates {
		if r.sustained && r.runs > 0 && (best < 0 || r.rate > rates[best].rate) {
			best = i
		}
	}
	if best < 0 {
		// The closest miss: a rate reaching the target first, then the
		// most clean runs, then the fewest records dropped, then the
		// higher rate.
		miss := 0
		for i, r := range rates {
			m := rates[miss]
			if r.reaches() != m.reaches() {
				if r.reaches() {
					miss = i
				}
				continue
			}
			if len(r.clean) != len(m.clean) {
				if len(r.clean) > len(m.clean) {
					miss = i
				}
				continue
			}
			if r.dropped() != m.dropped() {
				if r.dropped() < m.dropped() {
					miss = i
				}
				continue
			}
			if r.rate > m.rate {
				miss = i
			}
		}
		c.Value = fmt.Sprintf("no rate was sustained; closest: %.0f records/s (%s)", rates[miss].rate, rates[miss].describe())
		c.Pass = ptr(false)
		return c
	}
	b := rates[best]
	c.Value = fmt.Sprintf("%.0f records/s (%s)", b.rate, b.describe())
	var consumer []float64
	for _, l := range b.clean {
		if v, ok := l.Metrics["consumer-ns/record"]; ok {
			consumer = append(consumer, v)
		}
	}
	if len(consumer) > 0 {
		c.Value += fmt.Sprintf(", %.0f consumer-ns/record", Summarize(consumer).Median)
	}
	c.Pass = ptr(b.reaches())
	if !b.reaches() && best+1 < len(rates) {
		c.Value += "; next: " + rates[best+1].describe()
	}
	return c
}

// otlpChecks checks the OTLP exporter's targets: flowd's CPU per record
// exported (the median over the runs of Export/grpc/none), and the
// highest offered rate of Sustained that most runs took without dropping
// or losing a record.
func otlpChecks(lines []BenchLine, command string) []BenchCheck {
	cpu := BenchCheck{Figure: "OTLP export (gRPC, the defaults): flowd's CPU per record, into a collector on loopback",
		Target: fmt.Sprintf("≤ %d ns", targetOTLPCPUPerRecord), Command: command, Value: "pending (no BenchmarkExport)"}
	rate := BenchCheck{Figure: "OTLP export: sustained rate into a collector on loopback, zero loss",
		Target: fmt.Sprintf("≥ %d records/s, 0 drops", targetOTLPRecordsPerSec), Command: command, Value: "pending (no BenchmarkSustained)"}
	var export []BenchLine
	var names []string
	runs := map[string][]BenchLine{}
	for _, l := range lines {
		short := strings.TrimPrefix(l.Name, "Benchmark")
		switch {
		case strings.HasPrefix(short, "Export/grpc/none"):
			export = append(export, l)
		case strings.HasPrefix(short, "Sustained/"):
			if _, ok := runs[short]; !ok {
				names = append(names, short)
			}
			runs[short] = append(runs[short], l)
		}
	}
	if v, _, spread, ok := medianMetric(export, "cpu-ns/record"); ok {
		cpu.Value = fmt.Sprintf("%.0f ns%s", v, spread)
		if sys, _, _, ok := medianMetric(export, "sys-ns/record"); ok {
			cpu.Value += fmt.Sprintf(", of which %.0f ns system time (on loopback it includes the collector's receiving)", sys)
		}
		cpu.Pass = ptr(v <= targetOTLPCPUPerRecord)
	}
	var best *rateRuns
	for _, name := range names {
		r := newRateRuns(name, runs[name])
		if r.sustained && (best == nil || r.rate > best.rate) {
			best = &r
		}
	}
	switch {
	case best != nil:
		rate.Value = fmt.Sprintf("%.0f records/s (%s)", best.rate, best.describe())
		rate.Pass = ptr(best.rate >= 0.99*targetOTLPRecordsPerSec)
	case len(names) > 0:
		r := newRateRuns(names[0], runs[names[0]])
		rate.Value = "no rate was sustained; lowest offered: " + r.describe()
		rate.Pass = ptr(false)
	}
	return []BenchCheck{cpu, rate}
}

// medianMetric returns the median over runs of the first of units that the
// lines report, and the runs' spread as " (median of N runs, min–max)"
// when there is more than one.
func medianMetric(runs []BenchLine, units ...string) (v float64, unit, spread string, ok bool) {
	for _, u := range units {
		var xs []float64
		for _, l := range runs {
			if x, ok := l.Metrics[u]; ok {
				xs = append(xs, x)
			}
		}
		if len(xs) == 0 {
			continue
		}
		sum := Summarize(xs)
		if sum.N > 1 {
			spread = fmt.Sprintf(" (median of %d runs, %g–%g)", sum.N, sum.Min, sum.Max)
		}
		return sum.Median, u, spread, true
	}
	return 0, "", "", false
}

func joinFloats(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', -1, 64)
	}
	return strings.Join(parts, ", ")
}

func ptr[T any](v T) *T { return &v }

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, "|^$ *") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return out
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// metricsChecks checks the metrics' targets: what they add to a record
// (CPU time per record when reported: on a shared host the wall time grows
// with the other jobs), and a scrape of 1,000 cgroups. A target with no
// line is pending.
func metricsChecks(lines []BenchLine, command string) []BenchCheck {
	names, runs := byName(lines)
	perRecord := fmt.Sprintf("≤ %d ns", targetMetricsNsPerRecord)
	perScrape := fmt.Sprintf("≤ %d ms", targetScrapeMs)
	var checks []BenchCheck
	var sawPath, sawScrape bool
	for _, name := range names {
		short := strings.TrimPrefix(name, "Benchmark")
		switch {
		case strings.HasPrefix(short, "MetricsPath"):
			if v, u, spread, ok := medianMetric(runs[name], "cpu-ns/op", "ns/op"); ok {
				sawPath = true
				checks = append(checks, BenchCheck{Figure: short + ": what the metrics add per record", Value: fmt.Sprintf("%.0f %s%s", v, u, spread),
					Target: perRecord, Pass: ptr(v <= targetMetricsNsPerRecord), Command: command})
			}
		case strings.HasPrefix(short, "Scrape"):
			if v, _, spread, ok := medianMetric(runs[name], "ns/op"); ok {
				sawScrape = true
				checks = append(checks, BenchCheck{Figure: short + ": a scrape of 1,000 cgroups", Value: fmt.Sprintf("%.1f ms%s", v/1e6, spread),
					Target: perScrape, Pass: ptr(v <= targetScrapeMs*1e6), Command: command})
			}
		}
	}
	if !sawPath {
		checks = append(checks, BenchCheck{Figure: "MetricsPath: what the metrics add per record", Value: "pending (no BenchmarkMetricsPath)", Target: perRecord, Command: command})
	}
	if !sawScrape {
		checks = append(checks, BenchCheck{Figure: "Scrape: a scrape of 1,000 cgroups", Value: "pending (no BenchmarkScrape)", Target: perScrape, Command: command})
	}
	return checks
}

// byName groups lines by benchmark name: the names in the order first seen,
// and each name's runs.
func byName(lines []BenchLine) ([]string, map[string][]BenchLine) {
	var names []string
	runs := map[string][]BenchLine{}
	for _, l := range lines {
		if _, ok := runs[l.Name]; !ok {
			names = append(names, l.Name)
		}
		runs[l.Name] = append(runs[l.Name], l)
	}
	return names, runs
}
