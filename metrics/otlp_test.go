package metrics

import (
	"maps"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/flowd/flowd/otlp"
)

// TestOTLP checks that the export's counters are served as they are at
// the scrape, each in its series and of its type.
func TestOTLP(t *testing.T) {
	m := newMetrics(t)
	stats := otlp.Stats{
		Exported: 1000, Queued: 24, Requests: 7, Failures: 3,
		Dropped: otlp.Drops{QueueFull: 5, ExportFailed: 6, Rejected: 1, Shutdown: 2},
		Metrics: otlp.MetricsStats{Exported: 420, Requests: 4, Failures: 2, Lost: 1},
	}
	if err := m.RegisterOTLP(func() otlp.Stats { return stats }); err != nil {
		t.Fatal(err)
	}
	stats.Exported = 1500 // read at the scrape, not when registered
	want := map[string]float64{
		`flowd_otlp_exported_records_total`:                        1500,
		`flowd_otlp_dropped_records_total{reason="queue_full"}`:    5,
		`flowd_otlp_dropped_records_total{reason="export_failed"}`: 6,
		`flowd_otlp_dropped_records_total{reason="rejected"}`:      1,
		`flowd_otlp_dropped_records_total{reason="shutdown"}`:      2,
		`flowd_otlp_queued_records`:                                24,
		`flowd_otlp_requests_total{signal="logs"}`:                 7,
		`flowd_otlp_requests_total{signal="metrics"}`:              4,
		`flowd_otlp_failed_requests_total{signal="logs"}`:          3,
		`flowd_otlp_failed_requests_total{signal="metrics"}`:       2,
		`flowd_otlp_exported_data_points_total`:                    420,
		`flowd_otlp_failed_metric_pushes_total`:                    1,
	}
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if !strings.HasPrefix(f.GetName(), "flowd_otlp_") {
			continue
		}
		wantType := dto.MetricType_COUNTER
		if strings.HasSuffix(f.GetName(), "_queued_records") {
			wantType = dto.MetricType_GAUGE
		}
		if f.GetType() != wantType {
			t.Errorf("%s is a %s, want a %s", f.GetName(), f.GetType(), wantType)
		}
		for _, s := range f.GetMetric() {
			name := f.GetName()
			for _, l := range s.GetLabel() {
				name += "{" + l.GetName() + `="` + l.GetValue() + `"}`
			}
			got[name] = s.GetCounter().GetValue() + s.GetGauge().GetValue()
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("served %v\nwant %v", got, want)
	}
}
