package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

func newFillCmd() *cobra.Command {
	var strict bool
	cmd := &cobra.Command{
		Use:   "fill [FILE...]",
		Short: "Print records with every partial sample completed (output.samples: changes to full)",
		Long: "fill reads flowd's JSON Lines (the FILEs in order, or standard input when there is none\n" +
			"or a FILE is -) and prints every record as a complete line, as it reads: a partial sample\n" +
			"gets the keys and tcp_info members it left out from the previous line of its flow. Give\n" +
			"the files of one output oldest first (rotated ones before the current one). A partial\n" +
			"sample whose flow has no earlier line (input that starts in the middle of an output) is\n" +
			"printed as it is, with a warning on standard error. A line that is not a flowd record is\n" +
			"reported on standard error with its file and line number and left out; fill goes on\n" +
			"(--strict: stops there) and exits with status 1. As it may have been a partial sample of\n" +
			"any flow, every flow's partial samples after it are printed as they are, with that warning,\n" +
			"until the flow's next complete line.",
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{"-"}
			}
			f := filler{out: bufio.NewWriterSize(cmd.OutOrStdout(), 1<<16), warn: cmd.ErrOrStderr(), strict: strict, warned: map[flowID]bool{}}
			var err error
			for _, name := range args {
				if err = f.file(cmd, name); err != nil {
					break
				}
			}
			if ferr := f.out.Flush(); ferr != nil && err == nil {
				err = &runtimeError{fmt.Errorf("writing records: %w", ferr)}
			}
			if err == nil && f.bad > 0 {
				err = &runtimeError{fmt.Errorf("%d of %d lines were not flowd records (left out)", f.bad, f.lines)}
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&strict, "strict", false, "stop at the first line that is not a flowd record")
	return cmd
}

type flowID struct {
	backend string
	cookie  uint64
}

// filler completes the lines of one output, file after file.
type filler struct {
	f      sink.Filler
	enc    sink.Encoder
	out    *bufio.Writer
	warn   io.Writer
	strict bool            // stop at the first bad line
	warned map[flowID]bool // flows a warning was given for
	lines  int             // lines read, empty ones aside
	bad    int             // lines that were not records
	line   []byte
}

func (f *filler) file(cmd *cobra.Command, name string) error {
	var in io.Reader = cmd.InOrStdin()
	label := "standard input"
	if name != "-" {
		file, err := os.Open(name)
		if err != nil {
			return &runtimeError{err}
		}
		defer file.Close()
		in, label = file, name
	}
	r := bufio.NewReaderSize(in, 1<<16)
	for n := 1; ; n++ {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			for errors.Is(err, bufio.ErrBufferFull) { // skip the rest of it
				_, err = r.ReadSlice('\n')
			}
			f.lines++
			if berr := f.badLine(label, n, fmt.Errorf("line longer than %d bytes", r.Size())); berr != nil {
				return berr
			}
		} else if len(line) > 0 {
			if err := f.record(line, label, n); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return &runtimeError{fmt.Errorf("reading %s: %w", label, err)}
		}
		// Follow a growing input (tail -f | flowd fill) line by line.
		if r.Buffered() == 0 {
			if err := f.out.Flush(); err != nil {
				return &runtimeError{fmt.Errorf("writing records: %w", err)}
			}
		}
	}
}

// badLine reports a line that is not a record, after the records before
// it, and counts it; under --strict it is the error that stops fill.
// Whatever flow's line it was, that flow's next partial samples would be
// completed from the line before the lost one, with stale values: as the
// line names no flow that can be trusted, every flow is forgotten until
// its next complete line, and warned about again.
func (f *filler) badLine(label string, n int, err error) error {
	f.bad++
	f.f = sink.Filler{}
	clear(f.warned)
	if f.strict {
		return &runtimeError{fmt.Errorf("%s:%d: %w", label, n, err)}
	}
	if ferr := f.out.Flush(); ferr != nil {
		return &runtimeError{fmt.Errorf("writing records: %w", ferr)}
	}
	fmt.Fprintf(f.warn, "flowd fill: %s:%d: %v\n", label, n, err)
	return nil
}

func (f *filler) record(line []byte, label string, n int) error {
	if len(line) == 1 && line[0] == '\n' {
		return nil
	}
	f.lines++
	var r flow.Record
	partial, err := sink.ParseLine(line, &r)
	if err != nil {
		return f.badLine(label, n, err)
	}
	if !f.f.Fill(&r, partial) {
		if id := (flowID{r.Backend, r.Cookie}); !f.warned[id] {
			f.warned[id] = true
			fmt.Fprintf(f.warn, "flowd fill: %s:%d: partial sample of %s flow %d with no earlier line of that flow: printed as it is\n",
				label, n, r.Backend, r.Cookie)
		}
		if _, err := f.out.Write(line); err != nil || line[len(line)-1] == '\n' {
			return writeErr(err)
		}
		return writeErr(f.out.WriteByte('\n')) // the input's last line had none
	}
	f.line = append(f.enc.AppendJSON(f.line[:0], &r), '\n')
	_, err = f.out.Write(f.line)
	return writeErr(err)
}

func writeErr(err error) error {
	if err != nil {
		return &runtimeError{fmt.Errorf("writing records: %w", err)}
	}
	return nil
}
