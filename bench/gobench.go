package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// goBenchPattern and goBenchPkg select section 2's benchmarks (the
// per-record benchmarks of the ebpf backend).
const (
	goBenchPattern = "DecodeEncode|Pipeline"
	goBenchPkg     = "./backends/ebpf/"
)

// Section 2 targets.
const (
	targetNsPerRecord     = 1000
	targetAllocsPerRecord = 1
	targetRecordsPerSec   = 500_000
)

// goBench runs section 2: go test -bench in the repository.
func (s *suite) goBench(ctx context.Context) *GoBench {
	args := []string{"test", "-run", "^$", "-bench", goBenchPattern, "-benchmem"}
	if s.opts.benchtime != "" {
		args = append(args, "-benchtime", s.opts.benchtime)
	}
	args = append(args, goBenchPkg)
	g := &GoBench{Command: "sudo go " + strings.Join(quoteArgs(args), " ")}
	cmd := exec.CommandContext(ctx, s.opts.goCmd, args...)
	cmd.Dir = s.opts.repo
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	g.Lines = parseBenchOutput(string(out))
	if err != nil {
		g.Err = err.Error()
		g.Output = lastLines(string(out), 20)
	}
	g.Checks = benchChecks(g.Lines, g.Command)
	for _, l := range g.Lines {
		s.logf("  %s", l.Raw)
	}
	return g
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

// metric returns the first of units that the line reports.
func (l BenchLine) metric(units ...string) (float64, string, bool) {
	for _, u := range units {
		if v, ok := l.Metrics[u]; ok {
			return v, u, true
		}
	}
	return 0, "", false
}

// benchChecks checks section 2's targets against the benchmark lines.
// Every DecodeEncode line: time and allocations per record (a custom
// ns/record or allocs/record metric when reported, else per op, an op
// being one record). The Pipeline lines together: the best records/s among
// those with no drops (and nothing lost) must reach the target rate, within
// 1% (a line offered exactly 500k records/s sustains it at 499k). A target
// with no line is pending.
func benchChecks(lines []BenchLine, command string) []BenchCheck {
	var checks []BenchCheck
	var sawDecode, sawPipeline bool
	var best, bestDropping *BenchLine
	bestRate, bestDroppingRate := -1.0, -1.0
	for _, l := range lines {
		name := strings.TrimPrefix(l.Name, "Benchmark")
		switch {
		case strings.HasPrefix(name, "DecodeEncode"):
			sawDecode = true
			if v, u, ok := l.metric("ns/record", "ns/op"); ok {
				checks = append(checks, BenchCheck{Figure: name + ": time per record", Value: fmt.Sprintf("%.0f %s", v, u),
					Target: fmt.Sprintf("≤ %d ns", targetNsPerRecord), Pass: ptr(v <= targetNsPerRecord), Command: command})
			}
			if v, u, ok := l.metric("allocs/record", "allocs/op"); ok {
				checks = append(checks, BenchCheck{Figure: name + ": allocations per record", Value: fmt.Sprintf("%g %s", v, u),
					Target: fmt.Sprintf("≤ %d", targetAllocsPerRecord), Pass: ptr(v <= targetAllocsPerRecord), Command: command})
			}
		case strings.HasPrefix(name, "Pipeline"):
			sawPipeline = true
			rate, ok := l.Metrics["records/s"]
			if !ok {
				continue
			}
			if l.Metrics["drops"] != 0 || l.Metrics["lost"] != 0 {
				// The closest miss: at the target rate, the fewest drops.
				if bestDropping == nil || closerMiss(l, rate, *bestDropping, bestDroppingRate) {
					bestDroppingRate, bestDropping = rate, &l
				}
				continue
			}
			if rate > bestRate {
				bestRate, best = rate, &l
			}
		}
	}
	if !sawDecode {
		checks = append(checks,
			BenchCheck{Figure: "DecodeEncode: time per record", Value: "pending (no BenchmarkDecodeEncode yet)", Target: fmt.Sprintf("≤ %d ns", targetNsPerRecord), Command: command},
			BenchCheck{Figure: "DecodeEncode: allocations per record", Value: "pending (no BenchmarkDecodeEncode yet)", Target: fmt.Sprintf("≤ %d", targetAllocsPerRecord), Command: command})
	}
	target := fmt.Sprintf("≥ %d records/s, 0 drops", targetRecordsPerSec)
	figure := "Pipeline: sustained rate on one core, zero drops"
	switch {
	case !sawPipeline:
		checks = append(checks, BenchCheck{Figure: figure, Value: "pending (no BenchmarkPipeline yet)", Target: target, Command: command})
	case best == nil && bestDropping != nil:
		v := fmt.Sprintf("every rate dropped records; closest: %.0f records/s (%s) with %g drops, %g lost", bestDroppingRate,
			strings.TrimPrefix(bestDropping.Name, "Benchmark"), bestDropping.Metrics["drops"], bestDropping.Metrics["lost"])
		if o, ok := bestDropping.Metrics["others-cpu-%"]; ok {
			v += fmt.Sprintf(" while other jobs took %.0f%% of a CPU", o)
		}
		checks = append(checks, BenchCheck{Figure: figure, Value: v, Target: target, Pass: ptr(false), Command: command})
	case best == nil:
		checks = append(checks, BenchCheck{Figure: figure, Value: "no line reports records/s", Target: target, Pass: ptr(false), Command: command})
	default:
		v := fmt.Sprintf("%.0f records/s (%s)", bestRate, strings.TrimPrefix(best.Name, "Benchmark"))
		if c, ok := best.Metrics["consumer-ns/record"]; ok {
			v += fmt.Sprintf(", %.0f consumer-ns/record", c)
		}
		if ok := bestRate >= 0.99*targetRecordsPerSec; !ok {
			if n := nextRate(lines, best); n != nil {
				v += fmt.Sprintf("; the next rate (%s) dropped %g", strings.TrimPrefix(n.Name, "Benchmark"), n.Metrics["drops"])
				if o, ok := n.Metrics["others-cpu-%"]; ok {
					v += fmt.Sprintf(" while other jobs took %.0f%% of a CPU", o)
				}
			}
		}
		checks = append(checks, BenchCheck{Figure: figure, Value: v, Target: target, Pass: ptr(bestRate >= 0.99*targetRecordsPerSec), Command: command})
	}
	return checks
}

// nextRate returns the Pipeline line that follows l in the output (the next
// offered rate), if any.
func nextRate(lines []BenchLine, l *BenchLine) *BenchLine {
	for i := range lines {
		if lines[i].Name == l.Name && i+1 < len(lines) && strings.Contains(lines[i+1].Name, "Pipeline") {
			return &lines[i+1]
		}
	}
	return nil
}

// closerMiss reports whether line a (rate ra), which dropped records, is a
// closer miss of the pipeline target than line b: reaching the target rate
// first, then fewer drops and losses, then a higher rate.
func closerMiss(a BenchLine, ra float64, b BenchLine, rb float64) bool {
	reach := func(r float64) bool { return r >= 0.99*targetRecordsPerSec }
	if reach(ra) != reach(rb) {
		return reach(ra)
	}
	la, lb := a.Metrics["drops"]+a.Metrics["lost"], b.Metrics["drops"]+b.Metrics["lost"]
	if reach(ra) && la != lb {
		return la < lb
	}
	return ra > rb
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
