package otlp_test

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

// TestTLS exports to a collector that serves TLS with a certificate of a
// test CA and requires client certificates of it: with the CA and a
// client certificate the records arrive; trusting another CA, or without
// the client certificate, nothing does and the failures are logged.
func TestTLS(t *testing.T) {
	ca := testutil.NewTestCA(t, "flowd-test")
	serverCert, serverKey := ca.Issue(t, "collector", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.Issue(t, "flowd", x509.ExtKeyUsageClientAuth)
	other := testutil.NewTestCA(t, "other")
	col := testutil.StartOTelCollector(t, testutil.OTelCollectorOptions{CertFile: serverCert, KeyFile: serverKey, ClientCAFile: ca.File})

	records := testRecords(500)
	var sent []flow.Record
	for _, p := range []otlpconfig.Protocol{otlpconfig.ProtocolGRPC, otlpconfig.ProtocolHTTP} {
		name := strings.ReplaceAll(string(p), "/", "-")
		t.Run(name, func(t *testing.T) {
			cfg := baseConfig(endpoint(col, p), p)
			cfg.TLS = otlpconfig.TLS{Enabled: true, CAFile: ca.File, CertFile: clientCert, KeyFile: clientKey}
			e := newExporter(t, cfg, nil)
			batch := records[:250]
			if p == otlpconfig.ProtocolHTTP {
				batch = records[250:]
			}
			write(t, e, batch)
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if s := e.Stats(); s.Exported != uint64(len(batch)) {
				t.Errorf("stats %+v: want %d exported", s, len(batch))
			}
			sent = append(sent, batch...)
		})
		for _, bad := range []struct {
			name string
			tls  otlpconfig.TLS
			want string // in the error logged
		}{
			{"unknown CA", otlpconfig.TLS{Enabled: true, CAFile: other.File, CertFile: clientCert, KeyFile: clientKey}, "certificate"},
			{"no client certificate", otlpconfig.TLS{Enabled: true, CAFile: ca.File}, ""},
			{"plain text", otlpconfig.TLS{}, ""},
		} {
			t.Run(name+"/"+bad.name, func(t *testing.T) {
				cfg := baseConfig(endpoint(col, p), p)
				cfg.TLS = bad.tls
				cfg.ShutdownTimeout = 300 * time.Millisecond
				log, hook := logtest.NewNullLogger()
				e := newExporter(t, cfg, log)
				write(t, e, testRecords(10))
				testutil.WaitFor(t, "a failed request", 10*time.Second, func() bool { return e.Stats().Failures > 0 })
				if err := e.Close(); err != nil {
					t.Fatal(err)
				}
				if s := e.Stats(); s.Exported != 0 || s.Dropped.Total() != 10 {
					t.Errorf("stats %+v: want nothing exported, 10 dropped", s)
				}
				var logged []string
				for _, entry := range hook.AllEntries() {
					if err, ok := entry.Data[logrus.ErrorKey].(error); ok && entry.Level == logrus.WarnLevel && strings.Contains(err.Error(), bad.want) {
						logged = append(logged, err.Error())
					}
				}
				if len(logged) == 0 {
					t.Errorf("no warning logged an error that mentions %q", bad.want)
				}
				t.Logf("logged: %q", logged)
			})
		}
	}
	got, _ := col.Records(t)
	testutil.CompareRecords(t, got, sent, false)
}
