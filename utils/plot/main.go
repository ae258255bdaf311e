// Command plot draws how flowd's eBPF and netlink backends and iperf3 saw
// each stream of a validation scenario, and writes an HTML page with the
// scenario's checks next to the plots.
//
// Usage:
//
//	go run ./utils/plot DIR...
//
// Each DIR is a scenario directory as ./test -out OUT writes it
// (OUT/<scenario>/ with ebpf.jsonl, netlink.jsonl, iperf3.json and
// report.json), or a directory holding such directories (OUT itself).
//
// Into DIR/plots/ it writes, for each stream N of report.json (numbered from
// 1 in its order), METRIC-sN.png and METRIC-sN.svg for each METRIC of
// rtt, rttvar, cwnd-bytes, cwnd-segments, throughput, retransmits and
// bytes-acked, and index.html showing the checks and the SVG plots. Only the
// sending end's flow is drawn (the stream's cookie, in both backends). Time
// is seconds since that flow opened, the stream's start in report.json,
// which is also time 0 of iperf3's intervals.
//
// Exit status: 0 when every scenario was plotted, 1 when one could not be
// (the error names the file and the problem), 2 on a usage error.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("plot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./utils/plot DIR...")
		fmt.Fprintln(stderr, "  DIR: a scenario directory (ebpf.jsonl, netlink.jsonl, iperf3.json, report.json)")
		fmt.Fprintln(stderr, "       or a directory of them; plots go to DIR/plots/")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	status := 0
	for _, arg := range fs.Args() {
		dirs, err := scenarioDirs(arg)
		if err != nil {
			fmt.Fprintln(stderr, err)
			status = 1
			continue
		}
		for _, dir := range dirs {
			index, err := plotScenario(dir, stderr)
			if err != nil {
				fmt.Fprintln(stderr, err)
				status = 1
				continue
			}
			fmt.Fprintln(stdout, index)
		}
	}
	return status
}

// Files of a scenario directory.
const (
	ebpfFile    = "ebpf.jsonl"
	netlinkFile = "netlink.jsonl"
	iperfFile   = "iperf3.json"
	reportFile  = "report.json"
	plotsDir    = "plots"
)

var scenarioFiles = []string{ebpfFile, netlinkFile, iperfFile, reportFile}

// isScenario reports whether dir holds any of a scenario's files; a
// scenario missing some is still one, so that the error names what is missing.
func isScenario(dir string) bool {
	for _, f := range scenarioFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			return true
		}
	}
	return false
}

// scenarioDirs returns arg when it is a scenario directory, else the
// scenario directories directly under it.
func scenarioDirs(arg string) ([]string, error) {
	fi, err := os.Stat(arg)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", arg)
	}
	if isScenario(arg) {
		return []string{arg}, nil
	}
	entries, err := os.ReadDir(arg)
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, e := range entries {
		if d := filepath.Join(arg, e.Name()); e.IsDir() && isScenario(d) {
			dirs = append(dirs, d)
		}
	}
	if len(dirs) == 0 {
		return nil, fmt.Errorf("%s: no scenario here (%s and the others) nor in a directory under it", arg, reportFile)
	}
	return dirs, nil
}

// plotScenario writes dir/plots/ and returns the path of its index.html.
func plotScenario(dir string, warn io.Writer) (string, error) {
	sc, err := loadScenario(dir)
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, plotsDir)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	var pages []streamPage
	for i := range sc.Report.Streams {
		s, err := sc.stream(i)
		if err != nil {
			return "", err
		}
		if s.noIperf {
			fmt.Fprintf(warn, "%s: stream %d: %s has no sender intervals for socket %d; plotting flowd only\n",
				dir, i+1, iperfFile, s.Stream.IperfSocket)
		}
		files, err := writePlots(out, sc.Report.Scenario, i+1, s.Stream.Name, extract(s))
		if err != nil {
			return "", fmt.Errorf("%s: stream %d: %w", dir, i+1, err)
		}
		pages = append(pages, streamPage{N: i + 1, Stream: s.Stream, Plots: files})
	}
	index := filepath.Join(out, "index.html")
	if err := writeIndex(index, &sc.Report, pages); err != nil {
		return "", err
	}
	return index, nil
}
