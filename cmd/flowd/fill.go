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
	return &cobra.Command{
		Use:   "fill [FILE...]",
		Short: "Print records with every partial sample completed (output.samples: changes to full)",
		Long: "fill reads flowd's JSON Lines (the FILEs in order, or standard input when there is none\n" +
			"or a FILE is -) and prints every record as a complete line: a partial sample gets the\n" +
			"keys and tcp_info members it left out from the previous line of its flow. Give the\n" +
			"files of one output oldest first (rotated ones before the current one). A partial\n" +
			"sample whose flow has no earlier line (input that starts in the middle of an output)\n" +
			"is printed as it is, with a warning on standard error.",
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{"-"}
			}
			f := filler{out: bufio.NewWriterSize(cmd.OutOrStdout(), 1<<16), warn: cmd.ErrOrStderr(), warned: map[flowID]bool{}}
			for _, name := range args {
				if err := f.file(cmd, name); err != nil {
					return err
				}
			}
			if err := f.out.Flush(); err != nil {
				return &runtimeError{fmt.Errorf("writing records: %w", err)}
			}
			return nil
		},
	}
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
	warned map[flowID]bool // flows a warning was given for
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
			return &runtimeError{fmt.Errorf("%s:%d: line longer than %d bytes", label, n, r.Size())}
		}
		if len(line) > 0 {
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

func (f *filler) record(line []byte, label string, n int) error {
	if len(line) == 1 && line[0] == '\n' {
		return nil
	}
	var r flow.Record
	partial, err := sink.ParseLine(line, &r)
	if err != nil {
		return &runtimeError{fmt.Errorf("%s:%d: %w", label, n, err)}
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
