package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/utils/flows"
)

func newFlowsCmd() *cobra.Command {
	var (
		sel    flows.Selection
		sortBy string
		top    int
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "flows [FILE|DIR|-]...",
		Short: "Summarise each flow of flowd's output: bytes, rate, retransmits, RTT and what limited it",
		Long: "flows reads flowd's JSON Lines (files, plain or gzip'd; directories, their *.jsonl* files oldest\n" +
			"first; - or nothing for standard input; complete or partial sample lines; either backend) and\n" +
			"prints one row per flow and backend: its 4-tuple, cgroup, start, duration, bytes each way, mean\n" +
			"throughput, retransmits, min/median/p95 RTT and a verdict on what limited it (application,\n" +
			"receive window, send buffer, congestion with or without loss), from busy_time, rwnd_limited,\n" +
			"sndbuf_limited, delivery_rate_app_limited and total_retrans. docs/flows.md gives the rule.",
		Example: "  flowd flows /var/log/flowd/flowd.jsonl\n" +
			"  flowd flows --port 443 --sort rate --top 10 out.jsonl.gz\n" +
			"  flowd flows --json out.jsonl | jq 'select(.verdict == \"receive_window\")'",
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if top < 0 {
				return fmt.Errorf("--top %d: must not be negative", top)
			}
			if err := flows.SortBy(nil, sortBy); err != nil {
				return fmt.Errorf("--sort: %w", err)
			}
			srcs, err := flows.Sources(args, cmd.InOrStdin())
			if err != nil {
				return &runtimeError{err}
			}
			for _, p := range sel.ByPathOnly() {
				fmt.Fprintf(cmd.ErrOrStderr(), "flowd flows: cgroup %s does not exist on this host: only records that carry its path match it\n", p)
			}
			var z flows.Summarizer
			st, err := flows.Each(srcs, &sel, func(r *flow.Record) error {
				z.Add(r)
				return nil
			})
			if err != nil {
				return &runtimeError{err}
			}
			if w := st.Warning(); w != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "flowd flows: %s\n", w)
			}
			sums := z.Summaries()
			_ = flows.SortBy(sums, sortBy)
			if top > 0 && len(sums) > top {
				sums = sums[:top]
			}
			if len(sums) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "flowd flows: no flow selected (%d records read)\n", st.Records)
				return nil
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			if asJSON {
				enc := json.NewEncoder(out)
				for i := range sums {
					if err := enc.Encode(&sums[i]); err != nil {
						return &runtimeError{err}
					}
				}
			} else {
				writeTable(out, sums)
			}
			if err := out.Flush(); err != nil {
				return &runtimeError{fmt.Errorf("writing summaries: %w", err)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	sel.AddFlags(f)
	f.StringVar(&sortBy, "sort", flows.SortStart, "`order` of the rows: "+strings.Join(flows.SortKeys, ", "))
	f.IntVar(&top, "top", 0, "print only the first `N` rows of that order (0: all)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per flow and line instead of a table")
	return cmd
}

func writeTable(out *bufio.Writer, sums []flows.Summary) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(flows.Columns, "\t"))
	sameDay := flows.SameDay(sums)
	for i := range sums {
		fmt.Fprintln(tw, strings.Join(sums[i].Row(sameDay), "\t"))
	}
	tw.Flush()
}
