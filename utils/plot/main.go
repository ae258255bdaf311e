// Command plot draws flowd's records: the flows of any flowd output, or how
// flowd's two backends and iperf3 saw each stream of a validation scenario.
//
// Usage:
//
//	go run ./utils/plot [flags] [FILE|DIR|-]...
//
// Given flowd's JSON Lines (files, plain or gzip'd; directories, their
// *.jsonl* files oldest first; - or nothing for standard input, unless it
// is a terminal; complete or partial sample lines; either backend or
// both), it summarises every flow selected (--cookie, --port, --addr,
// --cgroup, --since, --until), draws the --top busiest by bytes moved into
// OUT/flow-COOKIE/ (rtt, cwnd, throughput, retransmits and limited, each
// as PNG and SVG, over wall-clock time) and writes OUT/index.html: the
// flows' summaries, as flowd flows prints them, each linking to its plots.
// docs/plots.md describes the plots.
//
// Given validation scenario directories (./test -out OUT writes
// OUT/<scenario>/ with ebpf.jsonl, netlink.jsonl, iperf3.json and
// report.json), or a directory of them, it writes into each DIR/plots/,
// for each stream N of report.json, METRIC-sN.png and METRIC-sN.svg for
// rtt, rttvar, cwnd-bytes, cwnd-segments, throughput, retransmits and
// bytes-acked, and index.html with the scenario's checks. Only the sending
// end's flow is drawn; time is seconds since it opened, which is also time
// 0 of iperf3's intervals.
//
// Exit status: 0 when everything was plotted, 1 when something could not
// be (the error names the file and the problem), 2 on a usage error.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/utils/flows"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

const usage = `usage: go run ./utils/plot [flags] [FILE|DIR|-]...
  FILE, DIR, -: flowd's JSON Lines (gzip'd or not; a directory's *.jsonl* files; - or nothing: standard input):
      the --top busiest flows are drawn into --out, with index.html
  DIR: a validation scenario (report.json, ebpf.jsonl, ...) or a directory of them:
      plots go to DIR/plots/
flags:
`

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	var o outputOptions
	fs := pflag.NewFlagSet("plot", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVarP(&o.Out, "out", "o", "flowd-plots", "`directory` to write index.html and the flows' plots into")
	fs.IntVarP(&o.Top, "top", "n", 20, "draw the `N` flows that moved the most bytes (0: all)")
	o.Sel.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	args = fs.Args()
	if len(args) == 0 {
		// As flowd flows: no argument reads standard input, unless it is
		// a terminal, where a person more likely forgot the file.
		if stdin == nil || isTerminal(stdin) {
			fs.Usage()
			return 2
		}
		args = []string{"-"}
	}
	if o.Top < 0 {
		fmt.Fprintf(stderr, "plot: --top %d: must not be negative\n", o.Top)
		return 2
	}
	scenarios, err := validationDirs(args)
	if err != nil {
		fmt.Fprintf(stderr, "plot: %v\n", err)
		return 1
	}
	if scenarios != nil {
		for _, name := range []string{"out", "top", "cookie", "port", "addr", "cgroup", "since", "until"} {
			if fs.Changed(name) {
				fmt.Fprintf(stderr, "plot: --%s does not apply to validation scenarios\n", name)
				return 2
			}
		}
		return plotScenarios(scenarios, stdout, stderr)
	}

	srcs, err := flows.Sources(args, stdin)
	if err != nil {
		if errors.Is(err, flows.ErrNoOutput) {
			err = fmt.Errorf("%w, and no validation scenario (%s) in it or in a directory under it", err, reportFile)
		}
		fmt.Fprintf(stderr, "plot: %v\n", err)
		return 1
	}
	for _, p := range o.Sel.ByPathOnly() {
		fmt.Fprintf(stderr, "plot: cgroup %s does not exist on this host: only records that carry its path match it\n", p)
	}
	index, err := plotOutput(srcs, o, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "plot: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, index)
	return 0
}

// isTerminal reports whether r is a terminal.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// validationDirs returns the scenario directories args name when they are
// all validation scenarios or directories of them, and nil when none is.
func validationDirs(args []string) ([]string, error) {
	var dirs []string
	found := 0
	for _, arg := range args {
		if arg == "-" {
			continue
		}
		fi, err := os.Stat(arg)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			continue
		}
		ds, err := scenarioDirs(arg)
		if err != nil {
			return nil, err
		}
		if len(ds) > 0 {
			found++
			dirs = append(dirs, ds...)
		}
	}
	switch {
	case found == 0:
		return nil, nil
	case found < len(args):
		return nil, errors.New("validation scenarios and flowd output cannot be plotted together")
	}
	return dirs, nil
}

func plotScenarios(dirs []string, stdout, stderr io.Writer) int {
	status := 0
	for _, dir := range dirs {
		index, err := plotScenario(dir, stderr)
		if err != nil {
			fmt.Fprintln(stderr, err)
			status = 1
			continue
		}
		fmt.Fprintln(stdout, index)
	}
	return status
}
