// Command flowd records per-TCP-flow tcp_info over time, from an eBPF
// sockops program or from netlink inet_diag dumps, as JSON Lines.
//
//	flowd run --config /etc/flowd/flowd.yaml
//	flowd run --cgroup system.slice/nginx.service --port 443
//	flowd config --config /etc/flowd/flowd.yaml
//	flowd fill records.jsonl
//	flowd flows records.jsonl
//	flowd version
//
// Exit status: 0 after SIGINT or SIGTERM, 1 when flowd fails at run time,
// 2 for a usage or configuration error (reported before anything starts).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/daemon"
)

// version and commit are set at build time (the Makefile does):
// go build -ldflags "-X main.version=v1.2.3 -X main.commit=0123abcd". The
// commit is otherwise read from the build's VCS stamp, which -buildvcs=false
// and builds outside a git checkout lack.
var (
	version = "dev"
	commit  = ""
)

// Exit statuses.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes flowd with args and returns its exit status.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "flowd: %s\n", oneLine(err.Error()))
	if errors.As(err, new(*runtimeError)) && !errors.Is(err, config.ErrInvalid) {
		return exitRuntime
	}
	return exitUsage
}

// runtimeError marks a failure of a correctly configured flowd (exit 1).
// Every other error is a usage or configuration error (exit 2), also one
// found when flowd starts (config.ErrInvalid: the cgroup is not there).
type runtimeError struct{ err error }

func (e *runtimeError) Error() string { return e.err.Error() }
func (e *runtimeError) Unwrap() error { return e.err }

// oneLine joins the lines of a message (errors.Join, cobra's suggestions).
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "flowd",
		Short:         "Record per-TCP-flow tcp_info over time",
		Long:          "flowd records the tcp_info of every TCP flow over time, from an eBPF sockops\nprogram or from netlink inet_diag dumps, and writes it as JSON Lines.",
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q%s", args[0], config.DidYouMean(cmd.SuggestionsFor(args[0])))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			_ = cmd.Usage()
			return errors.New("missing command: run, config, fill, flows or version")
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("{{.Version}}\n")
	root.SuggestionsMinimumDistance = 2
	root.SetFlagErrorFunc(flagError)
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(newRunCmd(), newConfigCmd(), newFillCmd(), newFlowsCmd(), newVersionCmd())
	return root
}

// flagError adds to an unknown flag's error the flags of the command it
// probably meant, or the commands that take it.
func flagError(cmd *cobra.Command, err error) error {
	name, ok := strings.CutPrefix(err.Error(), "unknown flag: --")
	if !ok {
		return err
	}
	var names []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	if near := config.Near(name, names); len(near) > 0 {
		for i := range near {
			near[i] = "--" + near[i]
		}
		return fmt.Errorf("%w%s", err, config.DidYouMean(near))
	}
	var takers []string
	for _, c := range cmd.Root().Commands() {
		if c != cmd && c.Flags().Lookup(name) != nil {
			takers = append(takers, c.CommandPath())
		}
	}
	if len(takers) > 0 {
		return fmt.Errorf("%w: %s does not take it (%s do)", err, cmd.CommandPath(), strings.Join(takers, " and "))
	}
	return err
}

func newRunCmd() *cobra.Command {
	var cf *configFlags
	cmd := &cobra.Command{
		Use:   "run [flags]",
		Short: "Record flows until SIGINT or SIGTERM; SIGHUP reopens the output file",
		Long: "run records flows as the configuration says: the built-in defaults, overridden by the\n" +
			"--config file, then by FLOWD_* variables, then by the flags below. Records go to\n" +
			"output.path (standard output by default), flowd's own log to standard error.",
		Example: "  flowd run --cgroup system.slice/nginx.service --port 443 -o /var/log/flowd/records.jsonl\n" +
			"  flowd run -c /etc/flowd/flowd.yaml --backend netlink --interval 500ms\n" +
			"  flowd run --port 5201 | jq 'select(.event == \"sample\") | .tcp_info.rtt'",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := cf.load(cmd)
			if err != nil {
				return err
			}
			log, err := daemon.NewLogger(cfg.Log, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			d, err := daemon.New(cfg, log, version)
			if err != nil {
				return &runtimeError{err}
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			context.AfterFunc(ctx, stop) // a second signal kills flowd at once
			stopHUP := reopenOnSIGHUP(ctx, d, log)
			defer stopHUP()

			if err := d.Run(ctx); err != nil {
				return &runtimeError{err}
			}
			log.Info("stopped")
			return nil
		},
	}
	cf = addConfigFlags(cmd)
	return cmd
}

// reopenOnSIGHUP reopens the daemon's output file on every SIGHUP (log
// rotation: rename the file, then send SIGHUP) until ctx ends or the
// returned function is called. Without it SIGHUP would end flowd.
func reopenOnSIGHUP(ctx context.Context, d *daemon.Daemon, log logrus.FieldLogger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-hup:
				switch reopened, err := d.Reopen(); {
				case err != nil:
					log.WithError(err).Error("SIGHUP: reopening the output failed; writing on to the current file")
				case reopened:
					log.Info("SIGHUP: reopened the output")
				default:
					log.Info("SIGHUP: the output is not a file, nothing to reopen")
				}
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(done)
	}
}

func newConfigCmd() *cobra.Command {
	var cf *configFlags
	cmd := &cobra.Command{
		Use:   "config [flags]",
		Short: "Print the configuration in effect (validated; run checks the machine) as YAML",
		Long: "config prints the configuration run would use with the same file, variables and flags,\n" +
			"validated, as a config file that sets every key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := cf.load(cmd)
			if err != nil {
				return err
			}
			b, err := cfg.YAML()
			if err != nil {
				return &runtimeError{err}
			}
			if _, err := cmd.OutOrStdout().Write(b); err != nil {
				return &runtimeError{fmt.Errorf("writing config: %w", err)}
			}
			return nil
		},
	}
	cf = addConfigFlags(cmd)
	return cmd
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print flowd's version, commit and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), versionString())
			if err != nil {
				return &runtimeError{err}
			}
			return nil
		},
	}
}

// versionString reads like "flowd v1.2.3 (commit 0123abcd, go1.26.8 linux/amd64)".
func versionString() string {
	rev, goVersion := "unknown", runtime.Version()
	if info, ok := debug.ReadBuildInfo(); ok {
		goVersion = info.GoVersion
		var modified bool
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified {
			rev += "-dirty"
		}
	}
	if commit != "" {
		rev = commit
	}
	return fmt.Sprintf("flowd %s (commit %s, %s %s/%s)", version, rev, goVersion, runtime.GOOS, runtime.GOARCH)
}
