package docs

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/backends"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics"
	"github.com/flowd/flowd/metrics/tcpstats"
	"github.com/flowd/flowd/otlp"
)

type discard struct{}

func (discard) Write(*flow.Record) error { return nil }

// oneCgroup is a CgroupNames that knows cgroup 1.
type oneCgroup struct{}

func (oneCgroup) Path(id uint64) (string, bool) { return "system.slice/a.service", id == 1 }

// served returns the metric families a flowd with every metric in use
// serves at /metrics.
func served(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	m, err := metrics.New("test")
	if err != nil {
		t.Fatal(err)
	}
	agg := tcpstats.New(tcpstats.Config{Names: oneCgroup{}, MaxCgroups: 10, By: tcpstats.ByRemotePort, MaxBy: 10, TopFlows: 10})
	r := flow.Record{Time: time.Now(), Backend: "ebpf", Event: flow.EventOpen, Cookie: 1, CgroupID: 1, Family: 4,
		LocalAddr: netip.MustParseAddr("10.0.0.1"), LocalPort: 40000, RemoteAddr: netip.MustParseAddr("10.0.0.2"), RemotePort: 443}
	s := m.Sink(agg)
	for _, ev := range []flow.Event{flow.EventOpen, flow.EventSample} {
		r.Event = ev
		for _, f := range tcpstats.Members {
			r.Info.Set(f, 1000*uint64(ev))
		}
		if err := s.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	m.RegisterTCP(agg, tcpstats.ByRemotePort)
	m.AddDrops("ebpf", 0)
	m.SetFlows("netlink", 0)
	m.SetUnread("ebpf", 0, 4096)
	m.AddDumps("netlink", []time.Duration{time.Millisecond}, 0)
	m.SetPrograms("ebpf", []backends.ProgramStats{{Name: "flowd_sockops"}})
	m.SetCgroup("ebpf", true, 0)
	m.Health().Running("ebpf")
	if err := m.RegisterOTLP(func() otlp.Stats { return otlp.Stats{} }); err != nil {
		t.Fatal(err)
	}

	log, _ := logtest.NewNullLogger()
	srv, err := m.Listen("127.0.0.1:0", metrics.ServerOptions{}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(t.Context())
	resp, err := http.Get("http://" + srv.Addr().String() + metrics.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.LegacyValidation)
	families, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return families
}

// TestMetricsDocumented checks that the tables of docs/metrics.md list
// every flowd_* metric flowd serves, and no other.
func TestMetricsDocumented(t *testing.T) {
	b, err := os.ReadFile("metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if m := codeSpan.FindStringSubmatch(line); strings.HasPrefix(line, "| `") && m != nil && strings.HasPrefix(m[1], "flowd_") {
			documented[m[1]] = true
		}
	}
	families := served(t)
	n := 0
	for name := range families {
		if strings.HasPrefix(name, "flowd_") {
			n++
			if !documented[name] {
				t.Errorf("docs/metrics.md does not document %s", name)
			}
		}
	}
	for name := range documented {
		if families[name] == nil {
			t.Errorf("docs/metrics.md documents %s, which flowd does not serve", name)
		}
	}
	if n < 30 {
		t.Errorf("%d flowd_ metrics served, want at least 30", n)
	}
}

var (
	// metricName finds the metric names of a PromQL expression: flowd's,
	// and the process collector's.
	metricName = regexp.MustCompile(`\b(flowd|process)_[a-z0-9_]+\b`)
	// grafanaVar is a dashboard variable in an expression.
	grafanaVar = regexp.MustCompile(`\$\{?(__rate_interval|[a-z]+)\}?`)
)

// TestDashboard checks configs/grafana/flowd.json: valid JSON, the panels
// the documentation promises, expressions that name only metrics flowd
// serves and, where promtool is installed, that PromQL parses.
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile("../configs/grafana/flowd.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Type, Title string
			Targets     []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("flowd.json: %v", err)
	}
	var exprs []string
	var types, titles []string
	for _, p := range dash.Panels {
		types, titles = append(types, p.Type), append(titles, p.Title)
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q: a target without an expression", p.Title)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			exprs = append(exprs, q["query"].(string))
		}
	}
	for _, want := range []string{"heatmap", "row", "timeseries", "stat"} {
		if !slices.Contains(types, want) {
			t.Errorf("no %s panel", want)
		}
	}
	for _, want := range []string{"Sent per cgroup", "Retransmit share", "srtt", "Open flows", "flowd health",
		"Ring buffer drops", "Kernel cost", "Seconds since the last record"} {
		if !slices.ContainsFunc(titles, func(s string) bool { return strings.Contains(s, want) }) {
			t.Errorf("no panel titled %q", want)
		}
	}

	families := served(t)
	names := 0
	for _, e := range exprs {
		for _, name := range metricName.FindAllString(e, -1) {
			names++
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suffix); ok && families[b].GetType() == dto.MetricType_HISTOGRAM {
					base = b
				}
			}
			if strings.HasPrefix(name, "process_") {
				continue // the process collector's: not all of them on every system
			}
			if families[base] == nil {
				t.Errorf("the dashboard's %q names %s, which flowd does not serve", e, name)
			}
		}
	}
	if names < 30 {
		t.Errorf("%d metric names in the dashboard's expressions", names)
	}

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("skipping the PromQL check: promtool (Debian's prometheus package) is not installed")
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		if strings.HasPrefix(e, "label_values(") {
			continue // Grafana's, not PromQL
		}
		e = grafanaVar.ReplaceAllStringFunc(e, func(v string) string {
			if strings.Contains(v, "__rate_interval") {
				return "5m"
			}
			return ".*"
		})
		q, _ := json.Marshal(e)
		fmt.Fprintf(&rules, "      - record: dashboard:expr_%d\n        expr: %s\n", i, q)
	}
	path := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules on the dashboard's expressions: %v\n%s", err, out)
	}
}
