package tcpstats

// Kind is how an instrument's values behave.
type Kind int

const (
	KindCounter   Kind = iota // only grows: a Prometheus counter, a monotonic OTLP sum
	KindGauge                 // goes up and down: flows open now
	KindHistogram             // observations in buckets; see Instrument.Histogram
)

// Instrument is one metric of every Series of an aggregation, as both of
// flowd's exporters publish it, so that the Prometheus endpoint and the
// OTLP push carry the same metrics under names that translate into each
// other (OpenTelemetry's rules: unit suffixes, _total for counters).
type Instrument struct {
	Prometheus string // its name after the aggregation's prefix: "bytes_acked_total"
	OTLP       string // its name after the OTLP prefix: "bytes_acked"
	Unit       string // UCUM, as OTLP names it: "By", "{flow}", "s", "By/s"
	Kind       Kind
	Help       string // one sentence, without its period
	// Value reads a counter or gauge; Histogram a histogram, whose
	// observations are Bounds' unit, PerUnit of them to one Unit.
	Value     func(*Series) uint64
	Histogram func(*Series) *Histogram
	Bounds    []uint64
	PerUnit   float64
}

// Instruments are the TCP metrics of an aggregation, in the order both
// exporters publish them.
var Instruments = []Instrument{
	{Prometheus: "bytes_acked_total", OTLP: "bytes_acked", Unit: "By", Kind: KindCounter,
		Help:  "Bytes the peers acknowledged (tcpi_bytes_acked), from each flow's first record",
		Value: func(s *Series) uint64 { return s.BytesAcked }},
	{Prometheus: "bytes_received_total", OTLP: "bytes_received", Unit: "By", Kind: KindCounter,
		Help:  "Bytes received (tcpi_bytes_received), from each flow's first record",
		Value: func(s *Series) uint64 { return s.BytesReceived }},
	{Prometheus: "bytes_retransmitted_total", OTLP: "bytes_retransmitted", Unit: "By", Kind: KindCounter,
		Help:  "Bytes retransmitted (tcpi_bytes_retrans), from each flow's first record",
		Value: func(s *Series) uint64 { return s.BytesRetrans }},
	{Prometheus: "segments_retransmitted_total", OTLP: "segments_retransmitted", Unit: "{segment}", Kind: KindCounter,
		Help:  "Segments retransmitted (tcpi_total_retrans), from each flow's first record",
		Value: func(s *Series) uint64 { return s.SegsRetrans }},
	{Prometheus: "flows_opened_total", OTLP: "flows_opened", Unit: "{flow}", Kind: KindCounter,
		Help:  "Flows opened: open records",
		Value: func(s *Series) uint64 { return s.Opened }},
	{Prometheus: "flows_closed_total", OTLP: "flows_closed", Unit: "{flow}", Kind: KindCounter,
		Help:  "Flows closed: close records",
		Value: func(s *Series) uint64 { return s.Closed }},
	{Prometheus: "flows_open", OTLP: "flows_open", Unit: "{flow}", Kind: KindGauge,
		Help:  "Flows open now: with records and no close record yet",
		Value: func(s *Series) uint64 { return s.Open }},
	{Prometheus: "srtt_seconds", OTLP: "srtt", Unit: "s", Kind: KindHistogram,
		Help:      "Smoothed RTT (tcpi_rtt) of the sample and close records",
		Histogram: func(s *Series) *Histogram { return &s.SRTT }, Bounds: RTTBounds[:], PerUnit: 1e6},
	{Prometheus: "min_rtt_seconds", OTLP: "min_rtt", Unit: "s", Kind: KindHistogram,
		Help:      "Minimum RTT (tcpi_min_rtt) of the sample and close records",
		Histogram: func(s *Series) *Histogram { return &s.MinRTT }, Bounds: RTTBounds[:], PerUnit: 1e6},
	{Prometheus: "delivery_rate_bytes_per_second", OTLP: "delivery_rate", Unit: "By/s", Kind: KindHistogram,
		Help:      "Delivery rate (tcpi_delivery_rate) of the sample and close records",
		Histogram: func(s *Series) *Histogram { return &s.DeliveryRate }, Bounds: RateBounds[:], PerUnit: 1},
}
