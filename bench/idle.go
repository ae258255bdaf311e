package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Idle connections are held by helper processes (this program, run as
// "bench idle-helper"): each holds both ends of at most helperConns
// connections, so that the suite needs no more descriptors per process
// than RLIMIT_NOFILE allows (root without CAP_SYS_RESOURCE cannot raise
// it), and the suite's own process stays small.
const (
	helperArg  = "idle-helper"
	helperFDs  = 64 // descriptors a helper needs besides its connections
	helperWait = 2 * time.Minute
)

// idleSet is the helpers holding one set of idle connections.
type idleSet struct {
	helpers []*exec.Cmd
	stdins  []io.WriteCloser
}

// helperConns returns how many connections one helper may hold.
func helperConns() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 1000
	}
	return int(min(lim.Max, 1<<20)-helperFDs) / 2
}

// openIdle starts helpers that open n idle connections in all. When
// clientCgroup is set, client sockets are made in that cgroup and server
// sockets in the cgroup the suite runs in; otherwise both there.
func openIdle(ctx context.Context, n int, clientCgroup string) (*idleSet, error) {
	s := &idleSet{}
	if n == 0 {
		return s, nil
	}
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("finding this program: %w", err)
	}
	per := helperConns()
	helpers := (n + per - 1) / per
	type ready struct {
		line string
		err  error
	}
	readies := make([]chan ready, 0, helpers)
	for i := range helpers {
		k := n / helpers
		if i < n%helpers {
			k++
		}
		args := []string{helperArg, "-n", fmt.Sprint(k)}
		if clientCgroup != "" {
			args = append(args, "-client-cgroup", clientCgroup)
		}
		cmd := exec.CommandContext(ctx, self, args...)
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			s.close()
			return nil, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			s.close()
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			s.close()
			return nil, fmt.Errorf("starting idle connection helper: %w", err)
		}
		s.helpers = append(s.helpers, cmd)
		s.stdins = append(s.stdins, stdin)
		ch := make(chan ready, 1)
		readies = append(readies, ch)
		go func() {
			line, err := bufio.NewReader(stdout).ReadString('\n')
			ch <- ready{strings.TrimSpace(line), err}
			_, _ = io.Copy(io.Discard, stdout)
		}()
	}
	timeout := time.After(helperWait)
	for i, ch := range readies {
		select {
		case r := <-ch:
			if r.err != nil || !strings.HasPrefix(r.line, "ready") {
				s.close()
				return nil, fmt.Errorf("idle connection helper %d failed (%q, %v)", i, r.line, r.err)
			}
		case <-timeout:
			s.close()
			return nil, fmt.Errorf("idle connection helpers not ready after %s", helperWait)
		}
	}
	return s, nil
}

// close makes the helpers reset their connections and exit.
func (s *idleSet) close() {
	for _, w := range s.stdins {
		w.Close()
	}
	for _, c := range s.helpers {
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	s.helpers, s.stdins = nil, nil
}

// runHelper is the helper process: it opens the connections, prints
// "ready", waits for its standard input to close, resets them and exits.
func runHelper(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(helperArg, flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 0, "connections")
	clientCgroup := fs.String("client-cgroup", "", "cgroup to make the client sockets in")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	err := func() error {
		var lim unix.Rlimit
		if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
			lim.Cur = lim.Max
			_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
		}
		f, err := newFarm() // listeners where the helper started
		if err != nil {
			return err
		}
		defer f.close()
		if *clientCgroup != "" {
			if err := movePID(*clientCgroup, os.Getpid()); err != nil {
				return err
			}
		}
		cs, err := f.open(context.Background(), *n, 4)
		if err != nil {
			return err
		}
		defer cs.abort()
		fmt.Fprintf(stdout, "ready %d\n", cs.Len())
		_, _ = io.Copy(io.Discard, stdin)
		return nil
	}()
	if err != nil && !errors.Is(err, io.EOF) {
		fmt.Fprintf(stderr, "bench %s: %v\n", helperArg, err)
		return 1
	}
	return 0
}
