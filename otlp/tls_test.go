package otlp_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	File string // its certificate, PEM
	dir  string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	ca.File = ca.write(t, name+"-ca.pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue returns the files of a certificate for 127.0.0.1 (server) or a
// client, and its key.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ca.write(t, name+".pem", "CERTIFICATE", der), ca.write(t, name+"-key.pem", "PRIVATE KEY", keyDER)
}

// TestTLS exports to a collector that serves TLS with a certificate of a
// test CA and requires client certificates of it: with the CA and a
// client certificate the records arrive; trusting another CA, or without
// the client certificate, nothing does and the failures are logged.
func TestTLS(t *testing.T) {
	ca := newTestCA(t, "flowd-test")
	serverCert, serverKey := ca.issue(t, "collector", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey := ca.issue(t, "flowd", x509.ExtKeyUsageClientAuth)
	other := newTestCA(t, "other")
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
	got, _ := received(t, col)
	compareRecords(t, got, sent, false)
}
