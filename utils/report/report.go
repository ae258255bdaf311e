// Package report is the schema of report.json, the result of one validation
// scenario: the streams it compared and each check. The validation writes it
// and utils/plot reads it, so it lives below both.
package report

import "time"

// Check is one comparison.
type Check struct {
	Stream    string  `json:"stream"`
	Metric    string  `json:"metric"`
	Compared  string  `json:"compared"`
	Value     float64 `json:"value"`
	Reference float64 `json:"reference"`
	Diff      float64 `json:"diff"`
	Tolerance float64 `json:"tolerance"`
	Rule      string  `json:"rule"`
	Samples   int     `json:"samples,omitempty"`
	Pass      bool    `json:"pass"`
}

// Stream is one iperf3 data stream and the flows flowd recorded for its
// sending end (and its receiving end).
type Stream struct {
	Name           string    `json:"name"` // sender tuple, local->remote
	Cookie         uint64    `json:"cookie"`
	ReceiverCookie uint64    `json:"receiver_cookie,omitempty"`
	Start          time.Time `json:"start"`         // the flow's open record: time 0 of the plots
	IperfSocket    int       `json:"iperf3_socket"` // the sending side's socket: a key of iperf3.Result.SenderIntervals

	EBPFRecords   int `json:"ebpf_records"`
	NetlinkRecord int `json:"netlink_records"`
}

// Report is a scenario's result, written as report.json.
type Report struct {
	Scenario    string    `json:"scenario"`
	Description string    `json:"description"`
	Kernel      string    `json:"kernel"`
	Started     time.Time `json:"started"`
	Interval    string    `json:"interval"`
	Streams     []Stream  `json:"streams"`
	Checks      []Check   `json:"checks"`
	Pass        bool      `json:"pass"`
}
