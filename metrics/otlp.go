package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flowd/flowd/otlp"
)

// Label names of the OTLP export's metrics.
const (
	labelReason = "reason"
	labelSignal = "signal"
)

var (
	otlpExportedDesc = prometheus.NewDesc(namespace+"_otlp_exported_records_total",
		"Records the OTLP receiver accepted.", nil, nil)
	otlpDroppedDesc = prometheus.NewDesc(namespace+"_otlp_dropped_records_total",
		"Records the OTLP export lost: queue_full (the queue held output.otlp.queue_size), export_failed (a permanent error, or retries ran out), rejected (by the receiver), shutdown (still queued when flowd stopped).",
		[]string{labelReason}, nil)
	otlpQueuedDesc = prometheus.NewDesc(namespace+"_otlp_queued_records",
		"Records held for the OTLP export: waiting, being encoded or being sent.", nil, nil)
	otlpRequestsDesc = prometheus.NewDesc(namespace+"_otlp_requests_total",
		"OTLP export requests sent, retries included, of records (logs) or of the TCP metrics (metrics).", []string{labelSignal}, nil)
	otlpFailuresDesc = prometheus.NewDesc(namespace+"_otlp_failed_requests_total",
		"OTLP export requests that failed, retried or not.", []string{labelSignal}, nil)
	otlpPointsDesc = prometheus.NewDesc(namespace+"_otlp_exported_data_points_total",
		"Data points of the TCP metrics the OTLP receiver accepted.", nil, nil)
	otlpLostPushesDesc = prometheus.NewDesc(namespace+"_otlp_failed_metric_pushes_total",
		"Pushes of the TCP metrics given up: the next push sends the cumulative values anew.", nil, nil)
)

// otlpStats exports the counters of the OTLP export, read at each scrape.
type otlpStats struct{ stats func() otlp.Stats }

// RegisterOTLP has the metrics endpoint serve the counters of the OTLP
// export, as stats (otlp.Exporter.Stats) returns them at each scrape.
func (m *Metrics) RegisterOTLP(stats func() otlp.Stats) error {
	return m.reg.Register(otlpStats{stats})
}

func (o otlpStats) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{otlpExportedDesc, otlpDroppedDesc, otlpQueuedDesc, otlpRequestsDesc,
		otlpFailuresDesc, otlpPointsDesc, otlpLostPushesDesc} {
		ch <- d
	}
}

func (o otlpStats) Collect(ch chan<- prometheus.Metric) {
	s := o.stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(otlpExportedDesc, s.Exported)
	counter(otlpDroppedDesc, s.Dropped.QueueFull, "queue_full")
	counter(otlpDroppedDesc, s.Dropped.ExportFailed, "export_failed")
	counter(otlpDroppedDesc, s.Dropped.Rejected, "rejected")
	counter(otlpDroppedDesc, s.Dropped.Shutdown, "shutdown")
	ch <- prometheus.MustNewConstMetric(otlpQueuedDesc, prometheus.GaugeValue, float64(s.Queued))
	counter(otlpRequestsDesc, s.Requests, "logs")
	counter(otlpRequestsDesc, s.Metrics.Requests, "metrics")
	counter(otlpFailuresDesc, s.Failures, "logs")
	counter(otlpFailuresDesc, s.Metrics.Failures, "metrics")
	counter(otlpPointsDesc, s.Metrics.Exported)
	counter(otlpLostPushesDesc, s.Metrics.Lost)
}
