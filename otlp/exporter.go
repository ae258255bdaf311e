// Package otlp exports flowd's records to an OpenTelemetry Collector, or
// any OTLP receiver, as OTLP log records over gRPC or HTTP/protobuf, and
// the TCP metrics of package tcpstats as OTLP metrics over the same
// connection.
//
// The Exporter is a flow.Sink that never blocks the backends: Write copies
// the record into a bounded queue and returns; senders (as many as
// concurrent_requests) take batches from the queue, encode and send them,
// retrying transient failures with backoff. When the queue is full, records are dropped and counted
// (Stats), and a warning with the counts is logged at most once per
// LogInterval, as the ring buffer's drops are. The metrics are pushed
// every MetricsInterval, with no queue: their values are cumulative, and
// the next push replaces one that failed.
package otlp

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/metrics/tcpstats"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("otlp exporter is closed")

// DefaultLogInterval is how often, at most, the exporter logs its
// problems when Options.LogInterval is 0.
const DefaultLogInterval = 5 * time.Second

// Log field keys.
const (
	fieldEndpoint        = "endpoint"
	fieldProtocol        = "protocol"
	fieldTLS             = "tls"
	fieldDropped         = "dropped"
	fieldDroppedTotal    = "dropped_total"
	fieldQueueFull       = "queue_full"
	fieldExportFailed    = "export_failed"
	fieldRejected        = "rejected"
	fieldShutdown        = "shutdown"
	fieldFailures        = "failed_requests"
	fieldMetricsInterval = "metrics_interval"
	fieldMetricsFailures = "failed_metric_requests"
	fieldMetricsLost     = "failed_metric_pushes"
	fieldQueued          = "queued"
	fieldRejectMessage   = "reject_message"
)

// Options are what the exporter needs besides its Config.
type Options struct {
	Resource Resource
	// Members are the tcp_info members exported (output.tcp_info); none =
	// every member a record has.
	Members []flow.Field
	// Events are the events whose records are exported (output.events);
	// none = every event.
	Events []flow.Event
	Log    logrus.FieldLogger // nil: nothing is logged
	// LogInterval is how often, at most, problems are logged; 0 =
	// DefaultLogInterval.
	LogInterval time.Duration
	// TCP, when set, has its aggregates pushed as OTLP metrics every
	// Config.MetricsInterval (when not 0); TCPBy is its second
	// aggregation (tcpstats.Config.By).
	TCP   *tcpstats.Aggregator
	TCPBy tcpstats.By
}

// Stats are the exporter's counters since New.
type Stats struct {
	Exported uint64 // records the receiver accepted
	Dropped  Drops
	Queued   int    // records held: waiting, being encoded or being sent
	Requests uint64 // requests of records
	Failures uint64 // failed requests of records, retried or not
	Metrics  MetricsStats
}

// MetricsStats count the pushes of the TCP metrics.
type MetricsStats struct {
	Exported uint64 // data points the receiver accepted
	Rejected uint64 // data points of requests it accepted but rejected (partial success)
	Requests uint64
	Failures uint64 // failed requests, retried or not
	Lost     uint64 // pushes given up, whole or a request of one: the next one replaces each (at Close, none does)
}

// Drops counts records lost, by why.
type Drops struct {
	QueueFull    uint64 // the queue held QueueSize records when they came
	ExportFailed uint64 // a permanent error, or retries ran out
	Rejected     uint64 // the receiver accepted the request but rejected these (partial success)
	Shutdown     uint64 // still queued when Close's deadline passed
}

// Total is the number of records lost.
func (d Drops) Total() uint64 { return d.QueueFull + d.ExportFailed + d.Rejected + d.Shutdown }

// maxSpareBatches is how many emptied batches are kept for reuse: enough
// for a steady flow of records, not the whole queue an outage filled.
const maxSpareBatches = 4

// Exporter sends records to an OTLP receiver. Its methods are safe for
// concurrent use.
type Exporter struct {
	cfg       otlpconfig.Config
	log       logrus.FieldLogger
	logEvery  time.Duration
	enc       *encoder
	omit      uint64 // bit e set: records of event e are not exported
	transport transport
	room      int // header room of a request buffer

	mu      sync.Mutex
	filling []flow.Record   // the batch Write appends to; nil when none
	full    [][]flow.Record // batches waiting, oldest first
	spare   [][]flow.Record // emptied batches, for reuse
	idle    []*request      // request buffers no attempt holds, for reuse
	queued  int             // records in filling, full and being sent
	closed  bool

	wake     chan struct{} // a batch is full; one token per sender at most
	shutdown chan struct{} // closed by Close: send what is queued, then stop
	sent     chan struct{} // closed when every sender and the metrics' pusher returned
	ctx      context.Context
	cancel   context.CancelFunc // cuts sending short at Close's deadline
	closing  context.Context    // cancelled when Close begins: a periodic push gives way to the last
	stopping context.CancelFunc // cancels closing
	reported chan struct{}      // closed when the reporter returned

	// The counters of Stats.
	exported                                              atomic.Uint64
	requests, failures                                    [numSignals]atomic.Uint64
	dropQueueFull, dropFailed, dropRejected, dropShutdown atomic.Uint64
	exportedPoints, rejectedPoints, metricsLost           atomic.Uint64

	problem    sync.Mutex // guards lastErr and lastReject, for the log
	lastErr    error      // of the last failed request
	lastReject string     // the receiver's message about the last records it rejected

	closeOnce sync.Once
}

var _ flow.Sink = (*Exporter)(nil)

// New validates cfg and starts an exporter. It does not wait for the
// receiver: one that is not up yet is retried like any transient failure.
func New(cfg otlpconfig.Config, opts Options) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Enabled() {
		return nil, otlpconfig.Invalid("endpoint", nil, `"" turns the export off: there is nothing to start`)
	}
	t, err := newTransport(&cfg)
	if err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		discard := logrus.New()
		discard.SetOutput(io.Discard)
		log = discard
	}
	log = log.WithField(fieldEndpoint, cfg.Endpoint)
	e := &Exporter{
		cfg:       cfg,
		log:       log,
		logEvery:  opts.LogInterval,
		enc:       newEncoder(opts.Resource, opts.Members),
		transport: t,
		wake:      make(chan struct{}, cfg.ConcurrentRequests),
		shutdown:  make(chan struct{}),
		sent:      make(chan struct{}),
		reported:  make(chan struct{}),
	}
	if e.logEvery <= 0 {
		e.logEvery = DefaultLogInterval
	}
	if len(opts.Events) > 0 {
		e.omit = ^uint64(0)
		for _, ev := range opts.Events {
			e.omit &^= 1 << (ev % 64)
		}
	}
	e.room = e.enc.headerRoom()
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.closing, e.stopping = context.WithCancel(e.ctx)
	var workers sync.WaitGroup
	for range cfg.ConcurrentRequests {
		workers.Go(e.send)
	}
	if opts.TCP != nil && cfg.MetricsInterval > 0 {
		enc := newMetricsEncoder(opts.Resource, opts.TCPBy)
		workers.Go(func() { e.pushMetrics(opts.TCP, enc) })
	}
	go func() { workers.Wait(); close(e.sent) }()
	go e.report()
	fields := logrus.Fields{fieldProtocol: cfg.Protocol, fieldTLS: cfg.TLS.Enabled}
	if opts.TCP != nil && cfg.MetricsInterval > 0 {
		fields[fieldMetricsInterval] = cfg.MetricsInterval
	}
	log.WithFields(fields).Info("exporting records over OTLP")
	return e, nil
}

// Write queues a copy of r, unless Options.Events leave its event out.
// When the queue is full it drops r, counts it and returns nil: a full
// queue is the receiver's problem, reported by Stats and the log, not the
// backend's.
func (e *Exporter) Write(r *flow.Record) error {
	if e.omit&(1<<(r.Event%64)) != 0 {
		return nil
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	if e.queued >= e.cfg.QueueSize {
		e.mu.Unlock()
		e.dropQueueFull.Add(1)
		return nil
	}
	if e.filling == nil {
		e.filling = e.newBatch()
	}
	e.filling = append(e.filling, *r)
	e.queued++
	full := len(e.filling) == e.cfg.BatchSize
	if full {
		e.full = append(e.full, e.filling)
		e.filling = nil
	}
	e.mu.Unlock()
	if full {
		select {
		case e.wake <- struct{}{}:
		default: // every sender is already woken
		}
	}
	return nil
}

// newBatch returns an empty batch; e.mu is held.
func (e *Exporter) newBatch() []flow.Record {
	if n := len(e.spare); n > 0 {
		b := e.spare[n-1]
		e.spare = e.spare[:n-1]
		return b
	}
	return make([]flow.Record, 0, e.cfg.BatchSize)
}

// Stats returns the exporter's counters.
func (e *Exporter) Stats() Stats {
	e.mu.Lock()
	queued := e.queued
	e.mu.Unlock()
	return Stats{
		Exported: e.exported.Load(),
		Dropped:  e.drops(),
		Queued:   queued,
		Requests: e.requests[signalLogs].Load(),
		Failures: e.failures[signalLogs].Load(),
		Metrics: MetricsStats{
			Exported: e.exportedPoints.Load(),
			Rejected: e.rejectedPoints.Load(),
			Requests: e.requests[signalMetrics].Load(),
			Failures: e.failures[signalMetrics].Load(),
			Lost:     e.metricsLost.Load(),
		},
	}
}

// DroppedRecords returns the number of records lost so far, for whatever
// reason (Drops).
func (e *Exporter) DroppedRecords() uint64 { return e.drops().Total() }

func (e *Exporter) drops() Drops {
	return Drops{
		QueueFull:    e.dropQueueFull.Load(),
		ExportFailed: e.dropFailed.Load(),
		Rejected:     e.dropRejected.Load(),
		Shutdown:     e.dropShutdown.Load(),
	}
}

// Close stops accepting records and sends what is queued, and the last
// values of the metrics, for at most Config.ShutdownTimeout; what is still
// queued then is dropped, counted and logged. It returns once the
// exporter's goroutines have returned. Only a failure to close the
// connection is an error; Close is idempotent.
func (e *Exporter) Close() error {
	var err error
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		e.mu.Unlock()
		e.stopping()
		close(e.shutdown)
		deadline := time.AfterFunc(e.cfg.ShutdownTimeout, e.cancel)
		<-e.sent
		deadline.Stop()
		e.cancel()
		err = e.transport.close()
		<-e.reported
	})
	return err
}

// send is one of the exporter's ConcurrentRequests senders: it sends full
// batches as they come, and the batch being filled every ExportInterval,
// until Close.
func (e *Exporter) send() {
	zip := e.newGzip()
	tick := time.NewTicker(e.cfg.ExportInterval)
	defer tick.Stop()
	for {
		select {
		case <-e.wake:
		case <-tick.C:
			e.seal()
		case <-e.shutdown:
			e.seal()
			e.sendQueued(zip)
			return
		}
		e.sendQueued(zip)
	}
}

// newGzip returns a gzip writer for one goroutine's request bodies when
// flowd compresses them (http/protobuf with gzip), else nil: gRPC
// compresses its messages itself.
func (e *Exporter) newGzip() *gzip.Writer {
	if e.cfg.Protocol == otlpconfig.ProtocolHTTP && e.cfg.Compression == otlpconfig.CompressionGzip {
		return gzip.NewWriter(nil)
	}
	return nil
}

// seal queues the batch being filled, if it holds records.
func (e *Exporter) seal() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.filling) > 0 {
		e.full = append(e.full, e.filling)
		e.filling = nil
	}
}

// sendQueued sends the queued batches, oldest first. Once Close's
// deadline has passed, it drops them unencoded, so that Close returns on
// time.
func (e *Exporter) sendQueued(zip *gzip.Writer) {
	for {
		e.mu.Lock()
		if len(e.full) == 0 {
			e.mu.Unlock()
			return
		}
		batch := e.full[0]
		e.full = e.full[1:]
		n := len(batch)
		if e.ctx.Err() != nil {
			e.dropShutdown.Add(uint64(n))
			e.queued -= n
			e.recycle(batch)
			e.mu.Unlock()
			continue
		}
		req := e.newRequest()
		e.mu.Unlock()

		for i := range batch {
			req.buf = e.enc.appendRecord(req.buf, &batch[i])
		}
		req.records = n
		req.body = e.enc.frame(req.buf, e.room)

		e.mu.Lock()
		e.recycle(batch)
		e.mu.Unlock()

		e.exportRequest(req, zip)
		req.release()

		e.mu.Lock()
		e.queued -= n
		e.mu.Unlock()
	}
}

// recycle keeps an emptied batch for reuse, if few are kept; e.mu is
// held.
func (e *Exporter) recycle(batch []flow.Record) {
	if len(e.spare) < maxSpareBatches {
		e.spare = append(e.spare, batch[:0])
	}
}

// newRequest returns a request buffer with its header room; e.mu is held.
// The exporter holds one reference until it is done with the request.
func (e *Exporter) newRequest() *request {
	var req *request
	if n := len(e.idle); n > 0 {
		req = e.idle[n-1]
		e.idle = e.idle[:n-1]
	} else {
		req = &request{
			buf:  make([]byte, 0, e.room+e.cfg.BatchSize*maxRecordLen),
			done: e.reuse,
		}
	}
	req.buf = req.buf[:e.room]
	req.refs.Store(1)
	return req
}

// reuse takes back a request no attempt holds any more.
func (e *Exporter) reuse(req *request) {
	e.mu.Lock()
	e.idle = append(e.idle, req)
	e.mu.Unlock()
}

// exportRequest sends req, a request of records, and counts the outcome.
func (e *Exporter) exportRequest(req *request, zip *gzip.Writer) {
	if e.ctx.Err() != nil {
		e.dropShutdown.Add(uint64(req.records))
		return
	}
	if zip != nil {
		if err := gzipBody(zip, req); err != nil {
			e.fail(req, fmt.Errorf("compressing request: %w", err))
			return
		}
	}
	p, err := e.exportRetrying(e.ctx, signalLogs, req)
	switch {
	case err == nil:
		e.accepted(req, p)
	case e.ctx.Err() != nil: // cut short by Close's deadline
		e.dropShutdown.Add(uint64(req.records))
	default:
		e.dropFailed.Add(uint64(req.records))
	}
}

// exportRetrying sends req of sig, retrying as Config.Retry says, until
// the receiver accepts it, fails it for good or the retries run out, or
// ctx ends; it counts the requests and failures of sig.
func (e *Exporter) exportRetrying(ctx context.Context, sig signal, req *request) (partial, error) {
	retry := e.cfg.Retry
	first := time.Now()
	interval := retry.InitialInterval
	for {
		attempt, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
		p, err := e.transport.export(attempt, sig, req)
		cancel()
		e.requests[sig].Add(1)
		if err == nil {
			return p, nil
		}
		if ctx.Err() != nil { // cut short: no news of the receiver
			return partial{}, ctx.Err()
		}
		e.failures[sig].Add(1)
		e.setProblem(err)
		var xe *exportError
		if !retry.Enabled || !errors.As(err, &xe) || !xe.retryable {
			return partial{}, err
		}
		// The last wait is shortened to end at max_elapsed_time, so that a
		// receiver back within it gets the request, unless it asked for more.
		left := retry.MaxElapsedTime - time.Since(first)
		if left <= 0 || xe.after > left {
			return partial{}, err
		}
		wait := min(max(jitter(interval), xe.after), left)
		interval = min(2*interval, retry.MaxInterval)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return partial{}, ctx.Err()
		}
	}
}

// jitter returns d ±50%, at random.
func jitter(d time.Duration) time.Duration {
	return d/2 + rand.N(d+1)
}

// accepted counts a request the receiver took, but for what it rejected.
func (e *Exporter) accepted(req *request, p partial) {
	rejected := uint64(max(min(p.rejected, int64(req.records)), 0))
	e.exported.Add(uint64(req.records) - rejected)
	if rejected > 0 {
		e.dropRejected.Add(rejected)
		e.setReject(p.message)
	}
}

// setReject keeps the receiver's message about what it rejected, for the
// log.
func (e *Exporter) setReject(message string) {
	e.problem.Lock()
	e.lastReject = message
	e.problem.Unlock()
}

// fail drops req's records for good.
func (e *Exporter) fail(req *request, err error) {
	e.dropFailed.Add(uint64(req.records))
	e.setProblem(err)
}

func (e *Exporter) setProblem(err error) {
	e.problem.Lock()
	e.lastErr = err
	e.problem.Unlock()
}

// report is the exporter's last goroutine: every LogInterval it logs one
// warning if records were dropped or requests failed since the last one,
// and once more when the senders have returned.
func (e *Exporter) report() {
	defer close(e.reported)
	tick := time.NewTicker(e.logEvery)
	defer tick.Stop()
	var last Stats
	for {
		select {
		case <-tick.C:
			last = e.warn(last)
		case <-e.sent:
			e.warn(last)
			return
		}
	}
}

// warn logs what went wrong since last and returns the stats it read.
func (e *Exporter) warn(last Stats) Stats {
	now := e.Stats()
	dropped := now.Dropped.Total() - last.Dropped.Total()
	failures := now.Failures - last.Failures
	metricsFailures, metricsLost := now.Metrics.Failures-last.Metrics.Failures, now.Metrics.Lost-last.Metrics.Lost
	if dropped == 0 && failures == 0 && metricsFailures == 0 && metricsLost == 0 {
		return now
	}
	e.problem.Lock()
	lastErr, reject := e.lastErr, e.lastReject
	e.problem.Unlock()
	exportFailed := now.Dropped.ExportFailed - last.Dropped.ExportFailed
	fields := logrus.Fields{
		fieldDropped:      dropped,
		fieldDroppedTotal: now.Dropped.Total(),
		fieldQueueFull:    now.Dropped.QueueFull - last.Dropped.QueueFull,
		fieldExportFailed: exportFailed,
		fieldRejected:     now.Dropped.Rejected - last.Dropped.Rejected,
		fieldShutdown:     now.Dropped.Shutdown - last.Dropped.Shutdown,
		fieldFailures:     failures,
		fieldQueued:       now.Queued,
	}
	if metricsFailures > 0 || metricsLost > 0 {
		fields[fieldMetricsFailures] = metricsFailures
		fields[fieldMetricsLost] = metricsLost
	}
	if reject != "" && (now.Dropped.Rejected > last.Dropped.Rejected || now.Metrics.Rejected > last.Metrics.Rejected) {
		fields[fieldRejectMessage] = reject
	}
	log := e.log.WithFields(fields)
	if (failures > 0 || metricsFailures > 0 || exportFailed > 0 || metricsLost > 0) && lastErr != nil {
		log = log.WithError(lastErr)
	}
	switch {
	case dropped > 0:
		log.Warn("records dropped: the OTLP receiver is unreachable, too slow or rejects them" + dropHint(now.Dropped, last.Dropped))
	case failures > 0:
		log.Warn("OTLP export requests failed; retrying")
	default:
		log.Warn("OTLP metrics pushes failed; the next push sends the values anew")
	}
	return now
}

// dropHint names the keys that bound the drops between last and now, by
// reason: the queue's size, the retries, the time to stop.
func dropHint(now, last Drops) string {
	var keys []string
	if now.QueueFull > last.QueueFull {
		keys = append(keys, "output.otlp.queue_size")
	}
	if now.ExportFailed > last.ExportFailed {
		keys = append(keys, "output.otlp.retry")
	}
	if now.Shutdown > last.Shutdown {
		keys = append(keys, "output.otlp.shutdown_timeout")
	}
	if len(keys) == 0 {
		return ""
	}
	return " (see " + strings.Join(keys, ", ") + ")"
}
