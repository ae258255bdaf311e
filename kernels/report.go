package kernels

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Check names a test that proves one thing the kernel matrix promises.
type Check struct {
	Step, Test string
	What       string
}

// PrintChecks prints one line per check with its result on each kernel.
func PrintChecks(w io.Writer, checks []Check, kernels []string, consoles []*Console) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "check\ttest\t%s\n", strings.Join(kernels, "\t"))
	for _, c := range checks {
		fmt.Fprintf(tw, "%s\t%s %s", c.What, c.Step, c.Test)
		for _, con := range consoles {
			fmt.Fprintf(tw, "\t%s", con.status(c.Step, c.Test))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

func (c *Console) status(step, test string) string {
	for _, s := range c.Steps {
		if s.Name == step {
			if st := s.status(test); st != "" {
				return st
			}
		}
	}
	return "not run"
}

// PrintTests prints every test of every step with its result and time.
func PrintTests(w io.Writer, c *Console) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "step\ttest\tresult\ttime\n")
	for _, s := range c.Steps {
		status := "did not end"
		if s.Ended {
			status = fmt.Sprintf("exit %d", s.Exit)
		}
		fmt.Fprintf(tw, "%s\t\t%s\t%s\n", s.Name, status, s.Duration.Round(10*time.Millisecond))
		for _, t := range s.Tests {
			fmt.Fprintf(tw, "\t%s%s\t%s\t%s\n", strings.Repeat("  ", t.Depth()), t.Name, t.Status, t.Duration)
		}
	}
	tw.Flush()
}

// PrintFailures prints the output of every failed or wrongly skipped test,
// or, for a step that never ended, its last lines.
func PrintFailures(w io.Writer, c *Console) {
	for _, s := range c.Steps {
		for _, t := range s.Tests {
			if (t.Status == "FAIL" || t.Status == "SKIP") && len(t.Output) > 0 {
				fmt.Fprintf(w, "--- %s %s: %s\n", s.Name, t.Status, t.Name)
				for _, l := range t.Output {
					fmt.Fprintln(w, l)
				}
			}
		}
		if !s.Ended || s.Exit != 0 && !slices.ContainsFunc(s.Tests, func(t TestResult) bool { return t.Status == "FAIL" }) {
			fmt.Fprintf(w, "--- %s: last lines\n", s.Name)
			for _, l := range s.Lines[max(0, len(s.Lines)-40):] {
				fmt.Fprintln(w, l)
			}
		}
	}
}

// Presence is which tcp_info members one source on one kernel provides.
type Presence struct {
	Column string
	Absent []string
	Known  bool // false: the tests that tell did not run
}

// PrintPresence prints, for every member, whether each column provides it.
func PrintPresence(w io.Writer, members []string, cols []Presence) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "tcp_info member")
	for _, c := range cols {
		fmt.Fprintf(tw, "\t%s", c.Column)
	}
	fmt.Fprintln(tw)
	for _, m := range members {
		fmt.Fprint(tw, m)
		for _, c := range cols {
			switch {
			case !c.Known:
				fmt.Fprint(tw, "\t?")
			case slices.Contains(c.Absent, m):
				fmt.Fprint(tw, "\t-")
			default:
				fmt.Fprint(tw, "\tyes")
			}
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprint(tw, "provided")
	for _, c := range cols {
		if c.Known {
			fmt.Fprintf(tw, "\t%d of %d", len(members)-len(c.Absent), len(members))
		} else {
			fmt.Fprint(tw, "\t?")
		}
	}
	fmt.Fprintln(tw)
	tw.Flush()
}

// What the presence tests log, after "members absent ".
const (
	absentOnKernel = "on this kernel"             // ebpf TestPresenceMatchesKernel: records vs tcp_sock BTF
	absentInJSON   = "from the JSON record"       // checks TestJSONPresence
	absentTCPInfo  = "from the kernel's tcp_info" // checks TestNetlinkPresence
)

// PresenceOf reads one kernel's presence columns from its console: what
// the ebpf backend provides (its records, checked against the kernel's
// tcp_sock BTF, and its JSON, which must agree) and what the kernel's own
// tcp_info provides (netlink). A disagreement is returned as a problem.
func PresenceOf(label string, c *Console) (ebpf, tcpInfo Presence, problems []string) {
	lists := map[string][]string{}
	for _, s := range c.Steps {
		for k, v := range s.Absent {
			lists[k] = v
		}
	}
	ebpf = Presence{Column: label + " ebpf"}
	tcpInfo = Presence{Column: label + " tcp_info"}
	rec, okRec := lists[absentOnKernel]
	js, okJSON := lists[absentInJSON]
	switch {
	case okRec:
		ebpf.Absent, ebpf.Known = rec, true
	case okJSON:
		ebpf.Absent, ebpf.Known = js, true
	}
	if okRec && okJSON && !slices.Equal(rec, js) {
		problems = append(problems, fmt.Sprintf("%s: members absent %s %v, but %s %v", label, absentOnKernel, rec, absentInJSON, js))
	}
	tcpInfo.Absent, tcpInfo.Known = lists[absentTCPInfo]
	return ebpf, tcpInfo, problems
}
