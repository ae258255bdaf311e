package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/sink"
)

// flowsInput writes three flows of 10 s as flowd does (partial samples):
// cookie 1 sends 50 MB limited by the receive window 80% of the time,
// cookie 2 sends 5 MB cwnd-limited with losses, cookie 3 receives cookie
// 2's bytes.
func flowsInput(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	j := sink.NewJSONL(&b)
	j.SetSamples(sink.SamplesChanges)
	t0 := time.Date(2026, 12, 5, 6, 0, 0, 0, time.UTC)
	a, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for s := range uint64(11) {
		for _, f := range []struct {
			cookie          uint64
			local, remote   netip.AddrPort
			acked, received uint64
			rwnd, retrans   uint64
		}{
			{1, netip.AddrPortFrom(a, 40001), netip.AddrPortFrom(c, 443), 5e6, 0, 8e5, 0},
			{2, netip.AddrPortFrom(a, 40002), netip.AddrPortFrom(c, 5201), 5e5, 0, 0, 3},
			{3, netip.AddrPortFrom(c, 5201), netip.AddrPortFrom(a, 40002), 0, 5e5, 0, 0},
		} {
			ev := flow.EventSample
			switch s {
			case 0:
				ev = flow.EventOpen
			case 10:
				ev = flow.EventClose
			}
			r := flow.Record{Time: t0.Add(time.Duration(s) * time.Second), Backend: "ebpf", Event: ev, Cookie: f.cookie,
				CgroupID: 42, Family: 4, LocalAddr: f.local.Addr(), RemoteAddr: f.remote.Addr(), LocalPort: f.local.Port(),
				RemotePort: f.remote.Port(), State: flow.StateEstablished, CA: "cubic"}
			for field, v := range map[flow.Field]uint64{
				flow.FieldBytesAcked: 1 + s*f.acked, flow.FieldBytesReceived: s * f.received, flow.FieldBusyTime: s * 1e6,
				flow.FieldRwndLimited: s * f.rwnd, flow.FieldSndbufLimited: 0, flow.FieldDeliveryRateAppLimited: 0,
				flow.FieldTotalRetrans: s * f.retrans, flow.FieldRTT: 10000 + 100*s, flow.FieldMinRTT: 9000,
				flow.FieldBytesSent: 1 + s*f.acked, flow.FieldBytesRetrans: s * f.retrans * 1448,
			} {
				r.Info.Set(field, v)
			}
			if err := j.Write(&r); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// flowdStdin runs the binary with stdin.
func flowdStdin(t *testing.T, stdin []byte, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, flowdBin, args...)
	cmd.Env = env()
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	_ = cmd.Run()
	return result{cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()}
}

func TestFlowsCommand(t *testing.T) {
	in := flowsInput(t)
	path := filepath.Join(t.TempDir(), "flowd.jsonl")
	if err := os.WriteFile(path, in, 0o644); err != nil {
		t.Fatal(err)
	}

	r := flowd(t, env(), "flows", path)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "COOKIE  BACKEND  LOCAL") || !strings.Contains(lines[0], "LIMITED BY") {
		t.Fatalf("table:\n%s", r.stdout)
	}
	for i, want := range []string{
		"1  ebpf  10.0.0.1:40001  10.0.0.2:443  42  06:00:00.000  10.0s  50.0 MB  0 B  40.0 Mbit/s  0  9.00/10.5/10.9 ms  receive window 80%",
		"2  ebpf  10.0.0.1:40002  10.0.0.2:5201  42  06:00:00.000  10.0s  5.00 MB  0 B  4.00 Mbit/s  30 (0.87%)  9.00/10.5/10.9 ms  congestion with loss 100%",
		"3  ebpf  10.0.0.2:5201  10.0.0.1:40002  42  06:00:00.000  10.0s  0 B  5.00 MB  4.00 Mbit/s  0  9.00/10.5/10.9 ms  receiver (peer: congestion)",
	} {
		if got := strings.Join(strings.Fields(lines[i+1]), "  "); got != strings.Join(strings.Fields(want), "  ") {
			t.Errorf("row %d:\n%s\nwant\n%s", i+1, got, want)
		}
	}

	// Standard input, gzip'd; JSON; sorted by bytes; the top one.
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(in)
	zw.Close()
	r = flowdStdin(t, z.Bytes(), "flows", "--json", "--sort", "bytes", "--top", "2")
	if r.code != 0 {
		t.Fatalf("--json: exit %d, stderr %q", r.code, r.stderr)
	}
	var got []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("--json line %q: %v", l, err)
		}
		got = append(got, m)
	}
	if len(got) != 2 || got[0]["cookie"] != 1.0 || got[0]["verdict"] != "receive_window" || got[0]["local"] != "10.0.0.1:40001" ||
		got[0]["bytes_acked"] != 5e7 || got[1]["verdict"] != "congestion" {
		t.Errorf("--json --sort bytes --top 2:\n%s", r.stdout)
	}
	if l, ok := got[0]["limits"].(map[string]any); !ok || l["receive_window"] != 0.8 {
		t.Errorf("limits %v", got[0]["limits"])
	}

	// Selection.
	r = flowd(t, env(), "flows", "--port", "443", path)
	if n := strings.Count(r.stdout, "\n"); r.code != 0 || n != 2 {
		t.Errorf("--port 443: exit %d, %d lines:\n%s", r.code, n, r.stdout)
	}
	for _, args := range [][]string{{"flows", "--cookie", "99", path}, {"flows", "--json", "--cookie", "99", path}} {
		r = flowd(t, env(), args...)
		if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "no flow selected (33 records read)") {
			t.Errorf("flowd %v: exit %d, stdout %q, stderr %q", args, r.code, r.stdout, r.stderr)
		}
	}

	// Errors: usage (2) and reading (1), each naming its cause.
	bad := filepath.Join(t.TempDir(), "bad.jsonl")
	if err := os.WriteFile(bad, append(in[:bytes.IndexByte(in, '\n')+1:bytes.IndexByte(in, '\n')+1], "not json\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"flows", "--sort", "size", path}, 2, `unknown sort order "size"`},
		{[]string{"flows", "--port", "70000", path}, 2, `"70000" for "--port"`},
		{[]string{"flows", "--since", "yesterday", path}, 2, "--since"},
		{[]string{"flows", "--top", "-1", path}, 2, "--top -1"},
		{[]string{"flows", filepath.Join(t.TempDir(), "nope.jsonl")}, 1, "nope.jsonl"},
		{[]string{"flows", bad}, 1, "bad.jsonl:2: "},
	} {
		r := flowd(t, env(), c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("flowd %v: exit %d, stderr %q; want %d and %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
}
