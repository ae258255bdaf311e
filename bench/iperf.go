package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// iperfResult is one iperf3 test over loopback.
type iperfResult struct {
	Gbps  float64       // received, as iperf3's receiver counted it
	Bytes float64       // received
	CPU   time.Duration // CPU of the monitored cgroup during the test
	Host  time.Duration // busy CPU time of the whole host during the test
	Wall  time.Duration // the client's run
}

// runIperf runs iperf3 server and client (cubic, one stream, secs seconds,
// 127.0.0.1) inside the cgroup mon, both on CPU cpu when it is ≥ 0.
func runIperf(ctx context.Context, mon *tempCgroup, secs, cpu int) (iperfResult, error) {
	port, err := freePort()
	if err != nil {
		return iperfResult{}, err
	}
	p := strconv.Itoa(port)
	attr := &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: mon.fd}
	name, args := pinned(cpu, "iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", p)
	srv := exec.CommandContext(ctx, name, args...)
	srv.SysProcAttr = attr
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return iperfResult{}, fmt.Errorf("starting iperf3 server: %w", err)
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	if err := waitListening(port, 5*time.Second); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 server: %w (%s)", err, strings.TrimSpace(srvOut.String()))
	}

	name, args = pinned(cpu, "iperf3", "-c", "127.0.0.1", "-p", p, "-t", strconv.Itoa(secs), "-J", "-C", "cubic")
	cli := exec.CommandContext(ctx, name, args...)
	cli.SysProcAttr = attr
	cpu0, err := mon.cpu()
	if err != nil {
		return iperfResult{}, err
	}
	host0, err := hostBusy()
	if err != nil {
		return iperfResult{}, err
	}
	start := time.Now()
	out, err := cli.Output()
	wall := time.Since(start)
	host1, herr := hostBusy()
	cpu1, cerr := mon.cpu()
	if err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 client: %w: %s", err, firstLine(out))
	}
	if err := errors.Join(cerr, herr); err != nil {
		return iperfResult{}, err
	}
	r, err := parseIperf(out)
	if err != nil {
		return iperfResult{}, err
	}
	r.CPU, r.Host, r.Wall = cpu1-cpu0, host1-host0, wall
	return r, nil
}

func parseIperf(b []byte) (iperfResult, error) {
	var rep struct {
		End struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return iperfResult{}, fmt.Errorf("parsing iperf3 -J output: %w", err)
	}
	if rep.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", rep.Error)
	}
	if rep.End.SumReceived.BitsPerSecond <= 0 {
		return iperfResult{}, fmt.Errorf("iperf3 reported no received bytes")
	}
	return iperfResult{Gbps: rep.End.SumReceived.BitsPerSecond / 1e9, Bytes: rep.End.SumReceived.Bytes}, nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// hostBusy returns the busy CPU time of the whole host so far: the first
// line of /proc/stat without idle and iowait.
func hostBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseProcStat(string(b))
}

// userHZ is the unit of /proc/stat (USER_HZ, 100 on every Linux ABI).
const userHZ = 100

func parseProcStat(s string) (time.Duration, error) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 || i >= 8 { // idle, iowait; guest time is already in user
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing /proc/stat %q: %w", line, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening waits until something listens on 127.0.0.1:port, read
// from /proc/net/tcp (connecting would start an iperf3 test).
func waitListening(port int, timeout time.Duration) error {
	want := fmt.Sprintf("0100007F:%04X", port)
	deadline := time.Now().Add(timeout)
	for {
		f, err := os.Open("/proc/net/tcp")
		if err != nil {
			return err
		}
		s := bufio.NewScanner(f)
		for s.Scan() {
			fs := strings.Fields(s.Text())
			if len(fs) > 3 && fs[1] == want && fs[3] == "0A" {
				f.Close()
				return nil
			}
		}
		f.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listens on 127.0.0.1:%d after %s", port, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
