package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/utils/flows"
)

// serviceUnit is the systemd unit flowd ships.
const serviceUnit = "../../configs/flowd.service"

// unitSetting returns the value of the first "key=value" line of the unit.
func unitSetting(t *testing.T, unit []byte, key string) string {
	t.Helper()
	s := bufio.NewScanner(bytes.NewReader(unit))
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), key+"="); ok {
			return v
		}
	}
	t.Fatalf("%s has no %s= line", serviceUnit, key)
	return ""
}

// TestServiceUnitVerifies checks the unit with systemd's own verifier, its
// ExecStart pointed at a built flowd and the shipped configuration.
func TestServiceUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("skipping: no systemd-analyze on this machine")
	}
	unit, err := os.ReadFile(serviceUnit)
	if err != nil {
		t.Fatal(err)
	}
	config, err := filepath.Abs("../../configs/flowd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	exec0 := unitSetting(t, unit, "ExecStart")
	if !strings.HasPrefix(exec0, "/usr/local/bin/flowd run --config ") {
		t.Fatalf("ExecStart=%s, want /usr/local/bin/flowd run --config FILE", exec0)
	}
	local := bytes.Replace(unit, []byte("ExecStart="+exec0), []byte("ExecStart="+flowdBin+" run --config "+config), 1)
	path := filepath.Join(t.TempDir(), "flowd.service")
	if err := os.WriteFile(path, local, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestServiceCapabilities runs flowd as root with no capabilities but those
// the unit grants (its CapabilityBoundingSet) and checks that the eBPF
// backend loads, attaches and records: the unit's list is enough.
func TestServiceCapabilities(t *testing.T) {
	testutil.RequireRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("skipping: no setpriv (util-linux) on this machine")
	}
	unit, err := os.ReadFile(serviceUnit)
	if err != nil {
		t.Fatal(err)
	}
	var bounding []string
	for _, c := range strings.Fields(unitSetting(t, unit, "CapabilityBoundingSet")) {
		bounding = append(bounding, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	cg := testutil.TempCgroup(t)
	out := filepath.Join(t.TempDir(), "records.jsonl")
	cfg := writeConfig(t, fmt.Sprintf("backends: [ebpf]\ncgroup: %s\nebpf:\n  mode: transition\noutput:\n  path: %s\n", cg, out))
	cmd := exec.Command(setpriv, "--bounding-set", "-all,"+strings.Join(bounding, ","), "--", flowdBin, "run", "--config", cfg)
	cmd.Env = env()
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
	deadline := time.After(20 * time.Second)
	for !strings.Contains(stderr.String(), "recording flows") {
		select {
		case <-exited:
			t.Fatalf("flowd with the unit's capabilities (%s) exited:\n%s", strings.Join(bounding, ","), stderr.String())
		case <-deadline:
			t.Fatalf("flowd did not start recording:\n%s", stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Client.Close()
	p.Server.Close()
	time.Sleep(200 * time.Millisecond)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("flowd did not stop on SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, stderr.String())
	}
	recs, err := flows.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	for _, r := range recs {
		if r.Cookie == cookie && r.Backend == "ebpf" {
			n++
		}
	}
	if n == 0 {
		t.Errorf("no ebpf record of the connection with the unit's capabilities:\n%s", stderr.String())
	}
}
