package main

import "time"

// Results is everything one run of the suite measured; bench/results.json
// is this, and BENCHMARKS.md is rendered from it.
type Results struct {
	Machine  Machine   `json:"machine"`
	Settings Settings  `json:"settings"`
	Sections []Section `json:"sections"` // time spent per section, in run order

	Overhead []OverheadRow `json:"overhead,omitempty"`
	GoBench  *GoBench      `json:"go_bench,omitempty"`
	Scale    []ScaleRow    `json:"scale,omitempty"`
	Memory   []MemoryRow   `json:"memory,omitempty"`
	Latency  *LatencyRow   `json:"latency,omitempty"`
	Churn    *ChurnRow     `json:"churn,omitempty"`
}

// Machine identifies where the figures come from.
type Machine struct {
	Nproc     int       `json:"nproc"`
	Kernel    string    `json:"kernel"`
	CPU       string    `json:"cpu"`
	MemoryGiB float64   `json:"memory_gib"`
	GoVersion string    `json:"go_version"`
	Commit    string    `json:"commit"`
	Date      time.Time `json:"date"`
	Loadavg   string    `json:"loadavg"` // /proc/loadavg when the run started: other jobs
}

// Settings are the parameters of the run (the flags).
type Settings struct {
	Quick      bool    `json:"quick"`
	Run        string  `json:"run,omitempty"`
	Pairs      int     `json:"pairs"`
	PairsU     int     `json:"pairs_untargeted"`
	CPU        int     `json:"cpu"` // section 1 pinned to this CPU; -1 = not pinned
	IperfSecs  int     `json:"iperf_seconds"`
	WindowSec  float64 `json:"window_seconds"`
	SettleSec  float64 `json:"settle_seconds"`
	IdleSec    float64 `json:"idle_seconds"`
	SpreadSec  float64 `json:"latency_spread_seconds"`
	Windows    int     `json:"windows"`
	ScalePairs int     `json:"scale_pairs"`
	DumpReps   int     `json:"dump_reps"`
	ScaleNs    []int   `json:"scale_ns"`
	Active     int     `json:"active_flows"`
	MemFlows   int     `json:"memory_flows"`
	Conns      int     `json:"latency_connections"`
}

// Section is the wall time one section took.
type Section struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

// OverheadRow is section 1 for one flowd configuration: iperf3 over
// loopback with flowd running (B) against without (A), alternating.
type OverheadRow struct {
	Name   string  `json:"name"`
	Config string  `json:"config"` // the flowd keys that differ from the defaults
	Target float64 `json:"target,omitempty"`
	// CostTarget is the most CPU-s/s that flowd and its programs may
	// take during the test (Cost); 0 = none.
	CostTarget float64 `json:"cost_target,omitempty"`
	Command    string  `json:"command"`

	BaseGbps []float64 `json:"base_gbps"` // A runs, in order
	WithGbps []float64 `json:"with_gbps"` // B runs, in order
	// BaseOthers and WithOthers are the CPU-s/s that everything else on
	// the host (other jobs; neither iperf3 nor flowd) used during each run.
	BaseOthers []float64 `json:"base_others_cpu"`
	WithOthers []float64 `json:"with_others_cpu"`

	// Ratio is WithGbps[i]/BaseGbps[i] per pair: the measured figure,
	// with a distribution-free confidence interval of its median.
	Ratio      Summary `json:"ratio"`
	RatioCILo  float64 `json:"ratio_ci_lo"`
	RatioCIHi  float64 `json:"ratio_ci_hi"`
	RatioCICov float64 `json:"ratio_ci_coverage"`
	// Accounted is the same ratio computed from what flowd demonstrably
	// cost during each B run: (1 - f0/K) * (U - b) / (U + f - f0), with U
	// the CPU-s/s of the monitored cgroup (iperf3 and the kernel work it
	// causes, the BPF program included), b the program's run time per
	// second, f the daemon's CPU-s/s, f0 the daemon's CPU-s/s with no
	// traffic (IdleCPU) and K the CPUs the traffic could use. It assumes
	// the test is CPU-bound, as it is here.
	Accounted Summary `json:"accounted"`
	IdleCPU   float64 `json:"idle_cpu"` // f0
	K         float64 `json:"k"`
	// TrafficCPU is U, FlowdCPU is f and BPFCPU is b (CPU-s/s), per B run.
	TrafficCPU Summary `json:"traffic_cpu"`
	// BaseTrafficCPU is the traffic's CPU-s/s in the A runs: where it is
	// above TrafficCPU, the traffic's tasks waited more with flowd than
	// flowd's own CPU time explains.
	BaseTrafficCPU Summary `json:"base_traffic_cpu"`
	FlowdCPU       Summary `json:"flowd_cpu"`
	BPFCPU         Summary `json:"bpf_cpu"`
	// Cost is f + b per B run: what monitoring the test cost.
	Cost     Summary `json:"cost"`
	BPFRuns  Summary `json:"bpf_runs_per_sec"`
	BPFNsRun Summary `json:"bpf_ns_per_run"`
	// Records per second flowd wrote during the B runs.
	RecordsPerSec Summary `json:"records_per_sec"`
	Drops         uint64  `json:"drops"`
	Err           string  `json:"error,omitempty"`
}

// GoBench is section 2: the Go benchmarks of backends/ebpf, otlp and metrics.
type GoBench struct {
	Command string       `json:"command"`
	Lines   []BenchLine  `json:"lines"`
	Output  string       `json:"output,omitempty"` // when they failed
	Err     string       `json:"error,omitempty"`
	Checks  []BenchCheck `json:"checks"`
}

// BenchLine is one result line of go test -bench.
type BenchLine struct {
	Name    string             `json:"name"`
	Iters   int64              `json:"iterations"`
	Metrics map[string]float64 `json:"metrics"` // unit -> value (ns/op, B/op, allocs/op, custom)
	Raw     string             `json:"raw"`
}

// BenchCheck is one target of section 2 checked against a benchmark line.
type BenchCheck struct {
	Figure  string `json:"figure"`
	Value   string `json:"value"`
	Target  string `json:"target"`
	Pass    *bool  `json:"pass,omitempty"` // nil: pending (no such benchmark yet)
	Info    bool   `json:"info,omitempty"` // reported, not judged: Target says what it is compared with
	Command string `json:"command"`
}

// ScaleRow is section 3 for one N: N idle connections outside the
// monitored cgroup, the active flows inside it.
type ScaleRow struct {
	N        int     `json:"n"`
	TCPInUse int     `json:"tcp_inuse"` // /proc/net/sockstat "TCP: inuse" while measured
	Command  string  `json:"command"`
	EBPFCPU  Summary `json:"ebpf_cpu"`     // flowd CPU-s per wall-s, per window
	EBPFBPF  Summary `json:"ebpf_bpf_cpu"` // sockops run time per wall-s, per window
	// EBPFGrowth is (flowd + BPF) with N idle connections over the same
	// in the window just before without them, per pair.
	EBPFGrowth Summary `json:"ebpf_growth"`
	NetlinkCPU Summary `json:"netlink_cpu"` // flowd CPU-s per wall-s, per window
	DumpMs     Summary `json:"dump_ms"`     // one poll of the netlink backend (dump + parse), wall time
	DumpCPUMs  Summary `json:"dump_cpu_ms"` // the same, CPU time of the thread that ran it
	SSMs       Summary `json:"ss_ms"`       // ss -tin, whole command
	SSLines    int     `json:"ss_lines"`
	Err        string  `json:"error,omitempty"`
}

// MemoryRow is section 4 for one backend.
type MemoryRow struct {
	Backend   string   `json:"backend"`
	Command   string   `json:"command"`
	Flows     int      `json:"flows"` // open records for the connections made
	IdleRSSKB int      `json:"idle_rss_kb"`
	HWMKB     int      `json:"vm_hwm_kb"`
	RSSKB     int      `json:"vm_rss_kb"`
	Maps      []MapMem `json:"maps,omitempty"`
	MapsBytes uint64   `json:"maps_memlock_bytes"`
	// Cost is the daemon's CPU-s/s plus its programs' run time per
	// second while the flows are open and idle, per window (ebpf).
	Cost  Summary `json:"cost"`
	Drops uint64  `json:"drops"`
	Err   string  `json:"error,omitempty"`
}

// MapMem is one BPF map of the daemon.
type MapMem struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	Memlock uint64 `json:"memlock"`
}

// LatencyRow is section 5.
type LatencyRow struct {
	Command string  `json:"command"`
	Conns   int     `json:"connections"`
	Missing int     `json:"missing"`
	P50Ms   float64 `json:"p50_ms"`
	P99Ms   float64 `json:"p99_ms"`
	MaxMs   float64 `json:"max_ms"`
	MinMs   float64 `json:"min_ms"`
	// KernelP50Ms is the median of the record's own timestamp (when the
	// program saw CLOSE) minus the time close() returned.
	KernelP50Ms float64 `json:"kernel_p50_ms"`
	Drops       uint64  `json:"drops"`
	Err         string  `json:"error,omitempty"`
}
