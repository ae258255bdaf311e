package main

import (
	"crypto/x509"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flowd/flowd/config"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/utils/flows"
)

// TestOTLPOnly runs flowd with output.path: none and the OTLP export over
// http/protobuf, gzip and TLS with client certificates of a test CA, all
// set in its configuration: the flow's records arrive in the collector,
// and no file is written.
func TestOTLPOnly(t *testing.T) {
	testutil.RequireRoot(t)
	ca := testutil.NewTestCA(t, "flowd-test")
	serverCert, serverKey := ca.Issue(t, "collector", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.Issue(t, "flowd", x509.ExtKeyUsageClientAuth)
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: ca.File})
	cg := testutil.TempCgroup(t)
	d := startDaemon(t, fmt.Sprintf(`backends: [ebpf]
cgroup: %s
ebpf:
  interval: 100ms
output:
  path: none
  otlp:
    endpoint: %s
    protocol: http/protobuf
    compression: gzip
    headers: {X-Scope-OrgID: tenant-1}
    tls: {enabled: true, ca_file: %s, cert_file: %s, key_file: %s}
    export_interval: 100ms
`, cg, col.HTTP, ca.File, clientCert, clientKey))
	cookie := oneFlow(t, cg)
	d.stop(t)

	got, _ := col.Records(t)
	events := map[flow.Event]int{}
	for _, r := range got {
		if r.Cookie == cookie {
			events[r.Event]++
		}
	}
	if events[flow.EventOpen] != 1 || events[flow.EventSample] == 0 || events[flow.EventClose] != 1 {
		t.Errorf("records of the flow in the collector: %v, want an open, samples and a close", events)
	}
	if _, err := os.Stat(config.PathNone); !os.IsNotExist(err) {
		t.Errorf("output.path: none wrote a file: %v", err)
	}
	if s := d.stderr.String(); !strings.Contains(s, "output=none") || !strings.Contains(s, `otlp="`+col.HTTP+`"`) {
		t.Errorf("the log does not say where the records go:\n%s", s)
	}
}

// TestOTLPCollectorNeverUp runs flowd with an OTLP endpoint where nothing
// listens: flowd records on, counts the failures, logs them once (within
// the 5 s interval of its warnings) and, on SIGTERM, gives up what is
// queued after output.otlp.shutdown_timeout and exits 0.
func TestOTLPCollectorNeverUp(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	out := t.TempDir() + "/records.jsonl"
	d := startDaemon(t, fmt.Sprintf(`backends: [ebpf]
cgroup: %s
output:
  path: %s
  otlp:
    endpoint: %s
    export_interval: 100ms
    shutdown_timeout: 500ms
    retry: {initial_interval: 100ms}
`, cg, out, testutil.FreeLoopbackAddr(t)))
	cookie := oneFlow(t, cg)
	testutil.WaitFor(t, "a failed request", 5*time.Second, func() bool {
		return metricValue(t, d.scrape(t), `flowd_otlp_failed_requests_total{signal="logs"}`) > 0
	})
	d.stop(t)

	recs, err := flows.Load(out)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Cookie == cookie {
			n++
		}
	}
	if n < 3 {
		t.Errorf("%d records of the flow in the file: flowd did not record on", n)
	}
	warnings := regexp.MustCompile(`level=warning msg="records dropped: the OTLP receiver.* dropped=(\d+) `).FindAllStringSubmatch(d.stderr.String(), -1)
	if len(warnings) != 1 {
		t.Fatalf("%d warnings about the dropped records, want 1:\n%s", len(warnings), d.stderr.String())
	}
	if dropped, _ := strconv.Atoi(warnings[0][1]); dropped < len(recs) {
		t.Errorf("the warning counts %d records dropped, want the %d recorded", dropped, len(recs))
	}
}

// metricValue returns the value of a sample of the text exposition, e.g.
// `flowd_otlp_requests_total{signal="logs"}`; -1 when there is none.
func metricValue(t *testing.T, text, sample string) float64 {
	t.Helper()
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return -1
}
