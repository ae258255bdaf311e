package otlp

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/protobuf/proto"

	"github.com/flowd/flowd/metrics/tcpstats"
)

// Attribute keys of the TCP metrics' data points: the label names of the
// same metrics at flowd's Prometheus endpoint, so that a collector's
// Prometheus exporter or remote write gives the same series.
const (
	MetricAttrBackend = "backend"
	MetricAttrCgroup  = "cgroup"
)

// instrument is one OTLP metric of the series of an aggregation
// (tcpstats.Instruments). Its name and unit translate, by the rules
// OpenTelemetry's Prometheus exporters follow (unit suffixes, _total for
// monotonic sums), to the name of the same metric at flowd's Prometheus
// endpoint: flowd.tcp.bytes_acked in By is flowd_tcp_bytes_acked_total.
type instrument struct {
	tcpstats.Instrument
	name   string    // prefix + OTLP
	bounds []float64 // of the histogram, in Unit
}

// instruments are the TCP metrics of one aggregation, named prefix+....
func instruments(prefix string) []instrument {
	out := make([]instrument, 0, len(tcpstats.Instruments))
	for _, in := range tcpstats.Instruments {
		o := instrument{Instrument: in, name: prefix + in.OTLP}
		for _, b := range in.Bounds {
			o.bounds = append(o.bounds, float64(b)/in.PerUnit)
		}
		out = append(out, o)
	}
	return out
}

// Names of the TCP metrics: per cgroup, per remote port or prefix
// (tcpstats.Config.By), and the records not aggregated.
const (
	MetricPrefixCgroup   = "flowd.tcp."
	MetricPrefixRemote   = "flowd.tcp.remote."
	MetricRecordsIgnored = "flowd.tcp.records_ignored"
)

// maxMetricsRequest bounds the protobuf bytes of one request of metrics:
// a collector's gRPC receiver refuses messages over 4 MiB by default
// (max_recv_msg_size_mib), which the metrics of ~2,200 cgroups pass. A
// push of more is split into requests of whole series.
const maxMetricsRequest = 3584 << 10

// metricsEncoder makes the ExportMetricsServiceRequests of the TCP metrics
// with the messages generated from OTLP's .proto files: a push per
// metrics interval, whose encoding costs nothing that matters, needs no
// encoder of flowd's own.
type metricsEncoder struct {
	resource *resourcepb.Resource
	scope    *commonpb.InstrumentationScope
	byLabel  string // the attribute of the Remote series: tcpstats.By
	cgroups  []instrument
	remotes  []instrument
	snapshot tcpstats.Snapshot
	start    uint64 // Unix ns: the start of the count of records ignored, which began with flowd
}

// metricsRequest is one request of a push.
type metricsRequest struct {
	body       []byte // an ExportMetricsServiceRequest
	dataPoints int
}

func newMetricsEncoder(res Resource, by tcpstats.By) *metricsEncoder {
	m := &metricsEncoder{
		resource: &resourcepb.Resource{},
		scope:    &commonpb.InstrumentationScope{Name: ServiceName, Version: validUTF8(res.Version)},
		byLabel:  string(by),
		cgroups:  instruments(MetricPrefixCgroup),
		start:    uint64(time.Now().UnixNano()),
	}
	for _, kv := range res.attributes() {
		m.resource.Attributes = append(m.resource.Attributes, stringKV(kv[0], kv[1]))
	}
	if by != tcpstats.ByNone {
		m.remotes = instruments(MetricPrefixRemote)
	}
	return m
}

func stringKV(key, value string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: key, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: value}}}
}

// encode reads the aggregates of agg and returns them as the requests of
// a push at time now: none when there is no series yet, more than one
// when one would pass maxMetricsRequest.
func (m *metricsEncoder) encode(agg *tcpstats.Aggregator, now time.Time) ([]metricsRequest, error) {
	s := &m.snapshot
	agg.Series(s)
	if len(s.Cgroups)+len(s.Remote) == 0 {
		return nil, nil
	}
	return m.appendRequests(nil, s.Cgroups, s.Remote, uint64(now.UnixNano()), true)
}

// appendRequests appends the requests of the series of cgroups and
// remote: one, or when it passes maxMetricsRequest, as many as make
// parts of about that size, split again if series of long names make one
// too large. The first carries the records ignored when ignored is set.
func (m *metricsEncoder) appendRequests(dst []metricsRequest, cgroups, remote []tcpstats.Series, t uint64, ignored bool) ([]metricsRequest, error) {
	req, err := m.request(cgroups, remote, t, ignored)
	if err != nil {
		return dst, err
	}
	n := len(cgroups) + len(remote)
	if len(req.body) <= maxMetricsRequest || n == 1 {
		return append(dst, req), nil
	}
	parts := min(n, len(req.body)/maxMetricsRequest+1)
	for i := range parts {
		lo, hi := i*n/parts, (i+1)*n/parts
		c, r := window(cgroups, lo, hi), window(remote, lo-len(cgroups), hi-len(cgroups))
		if dst, err = m.appendRequests(dst, c, r, t, ignored && i == 0); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// window returns s[lo:hi], both clamped to s.
func window(s []tcpstats.Series, lo, hi int) []tcpstats.Series {
	return s[min(max(lo, 0), len(s)):min(max(hi, 0), len(s))]
}

// request encodes one request of the series of cgroups and remote, and
// of the records ignored when ignored is set.
func (m *metricsEncoder) request(cgroups, remote []tcpstats.Series, t uint64, ignored bool) (metricsRequest, error) {
	var metrics []*metricspb.Metric
	metrics = m.appendSeries(metrics, m.cgroups, cgroups, MetricAttrCgroup, t)
	metrics = m.appendSeries(metrics, m.remotes, remote, m.byLabel, t)
	points := len(m.cgroups)*len(cgroups) + len(m.remotes)*len(remote)
	if ignored {
		dp := &metricspb.NumberDataPoint{StartTimeUnixNano: m.start, TimeUnixNano: t, Value: &metricspb.NumberDataPoint_AsInt{AsInt: int64(m.snapshot.Ignored)}}
		metrics = append(metrics, &metricspb.Metric{
			Name: MetricRecordsIgnored, Unit: "{record}",
			Description: fmt.Sprintf("Records of flows the TCP metrics did not follow: more than %d flows at once.", tcpstats.MaxTracked),
			Data: &metricspb.Metric_Sum{Sum: &metricspb.Sum{IsMonotonic: true, DataPoints: []*metricspb.NumberDataPoint{dp},
				AggregationTemporality: metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE}},
		})
		points++
	}
	// MetricsData has the wire format of ExportMetricsServiceRequest (both
	// are resource_metrics = 1), without the gRPC gateway the latter's
	// package brings along.
	body, err := proto.Marshal(&metricspb.MetricsData{ResourceMetrics: []*metricspb.ResourceMetrics{{
		Resource:     m.resource,
		ScopeMetrics: []*metricspb.ScopeMetrics{{Scope: m.scope, Metrics: metrics}},
	}}})
	return metricsRequest{body: body, dataPoints: points}, err
}

// appendSeries appends the instruments of series, each series a data
// point labelled by its backend and, as label, its key.
func (m *metricsEncoder) appendSeries(dst []*metricspb.Metric, ins []instrument, series []tcpstats.Series, label string, t uint64) []*metricspb.Metric {
	if len(series) == 0 {
		return dst
	}
	attrs := make([][]*commonpb.KeyValue, len(series))
	for i := range series {
		attrs[i] = []*commonpb.KeyValue{stringKV(MetricAttrBackend, validUTF8(series[i].Backend)), stringKV(label, validUTF8(series[i].Key))}
	}
	const cumulative = metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE
	for _, in := range ins {
		metric := &metricspb.Metric{Name: in.name, Unit: in.Unit, Description: in.Help + "."}
		switch in.Kind {
		case tcpstats.KindCounter, tcpstats.KindGauge:
			sum := &metricspb.Sum{AggregationTemporality: cumulative, IsMonotonic: in.Kind == tcpstats.KindCounter}
			for i := range series {
				x := &series[i]
				sum.DataPoints = append(sum.DataPoints, &metricspb.NumberDataPoint{
					Attributes: attrs[i], StartTimeUnixNano: uint64(x.Start), TimeUnixNano: t,
					Value: &metricspb.NumberDataPoint_AsInt{AsInt: int64(in.Value(x))},
				})
			}
			metric.Data = &metricspb.Metric_Sum{Sum: sum}
		case tcpstats.KindHistogram:
			hist := &metricspb.Histogram{AggregationTemporality: cumulative}
			for i := range series {
				x := &series[i]
				h := in.Histogram(x)
				sum := h.Sum / in.PerUnit
				hist.DataPoints = append(hist.DataPoints, &metricspb.HistogramDataPoint{
					Attributes: attrs[i], StartTimeUnixNano: uint64(x.Start), TimeUnixNano: t,
					Count: h.Count, Sum: &sum, ExplicitBounds: in.bounds,
					BucketCounts: h.Counts[:len(in.bounds)+1],
				})
			}
			metric.Data = &metricspb.Metric_Histogram{Histogram: hist}
		}
		dst = append(dst, metric)
	}
	return dst
}

// pushMetrics is the exporter's goroutine of the TCP metrics: every
// MetricsInterval it pushes their values, and once more at Close, when
// the last records are in. A push that fails is retried until the next
// one is due, which replaces it: the values are cumulative, so that a
// lost push loses no count, only a point in time.
func (e *Exporter) pushMetrics(agg *tcpstats.Aggregator, enc *metricsEncoder) {
	zip := e.newGzip()
	tick := time.NewTicker(e.cfg.MetricsInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			ctx, cancel := context.WithTimeout(e.closing, e.cfg.MetricsInterval)
			err := e.pushOnce(ctx, agg, enc, zip)
			// Cut short by Close, a push is not lost: Close's push replaces it.
			if err != nil && !errors.Is(ctx.Err(), context.Canceled) {
				e.metricsLost.Add(1)
			}
			cancel()
		case <-e.shutdown:
			if err := e.pushOnce(e.ctx, agg, enc, zip); err != nil { // within Close's deadline
				e.metricsLost.Add(1)
			}
			return
		}
	}
}

// pushOnce pushes the current values, retrying until ctx ends. It returns
// the last error of the requests that failed.
func (e *Exporter) pushOnce(ctx context.Context, agg *tcpstats.Aggregator, enc *metricsEncoder, zip *gzip.Writer) error {
	reqs, err := enc.encode(agg, time.Now())
	if err != nil {
		err = fmt.Errorf("encoding metrics: %w", err)
		e.setProblem(err)
		return err
	}
	var failed error
	for _, r := range reqs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err := e.pushRequest(ctx, r, zip); err != nil {
			failed = err
		}
	}
	return failed
}

// pushRequest sends one request of a push and counts its data points.
func (e *Exporter) pushRequest(ctx context.Context, r metricsRequest, zip *gzip.Writer) error {
	req := &request{body: r.body, records: r.dataPoints, done: func(*request) {}}
	req.refs.Store(1)
	defer req.release()
	if zip != nil {
		if err := gzipBody(zip, req); err != nil {
			err = fmt.Errorf("compressing metrics: %w", err)
			e.setProblem(err)
			return err
		}
	}
	p, err := e.exportRetrying(ctx, signalMetrics, req)
	if err != nil {
		return err
	}
	rejected := uint64(max(min(p.rejected, int64(req.records)), 0))
	e.exportedPoints.Add(uint64(req.records) - rejected)
	if rejected > 0 {
		e.rejectedPoints.Add(rejected)
		e.setReject(p.message)
	}
	return nil
}
