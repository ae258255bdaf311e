// Package iperf3 reads the JSON report iperf3 writes with -J: the parts
// flowd's validation compares with (connections, per-interval TCP_INFO
// readings, end-of-test totals).
package iperf3

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// Result is an iperf3 -J report.
type Result struct {
	Start     Start      `json:"start"`
	Intervals []Interval `json:"intervals"`
	End       End        `json:"end"`
	Error     string     `json:"error"`
	// ServerOutput is the server's own report (with --get-server-output):
	// in reverse mode (-R) the server is the sender, and only its
	// intervals have rtt and snd_cwnd.
	ServerOutput *Result `json:"server_output_json"`
}

// Start describes the test setup.
type Start struct {
	Connected []Connection `json:"connected"`
	Timestamp struct {
		Timesecs int64 `json:"timesecs"`
	} `json:"timestamp"`
	TestStart struct {
		Protocol   string `json:"protocol"`
		NumStreams int    `json:"num_streams"`
		Duration   int    `json:"duration"`
		Reverse    int    `json:"reverse"`
	} `json:"test_start"`
}

// Connection is one data stream's socket.
type Connection struct {
	Socket     int    `json:"socket"`
	LocalHost  string `json:"local_host"`
	LocalPort  int    `json:"local_port"`
	RemoteHost string `json:"remote_host"`
	RemotePort int    `json:"remote_port"`
}

// Interval is one reporting interval (-i).
type Interval struct {
	Streams []Stream `json:"streams"`
}

// Stream is one stream's figures over one interval. Start and End are
// seconds since the test started; Rtt and Rttvar are µs and SndCwnd bytes,
// read from TCP_INFO at the end of the interval (sender side only).
type Stream struct {
	Socket        int     `json:"socket"`
	Start         float64 `json:"start"`
	End           float64 `json:"end"`
	Seconds       float64 `json:"seconds"`
	Bytes         uint64  `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   *int64  `json:"retransmits"`
	SndCwnd       *uint64 `json:"snd_cwnd"`
	RTT           *uint64 `json:"rtt"`
	RTTVar        *uint64 `json:"rttvar"`
	PMTU          *uint64 `json:"pmtu"`
	Omitted       bool    `json:"omitted"`
	Sender        bool    `json:"sender"`
}

// End holds the totals.
type End struct {
	Streams []EndStream `json:"streams"`
}

// EndStream is one stream's totals as sender and as receiver.
type EndStream struct {
	Sender   Total `json:"sender"`
	Receiver Total `json:"receiver"`
}

// Total is a stream's end-of-test summary.
type Total struct {
	Socket        int     `json:"socket"`
	Start         float64 `json:"start"`
	End           float64 `json:"end"`
	Bytes         uint64  `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   *int64  `json:"retransmits"`
	MaxSndCwnd    *uint64 `json:"max_snd_cwnd"`
	MaxRTT        *uint64 `json:"max_rtt"`
	MinRTT        *uint64 `json:"min_rtt"`
	MeanRTT       *uint64 `json:"mean_rtt"`
	Sender        bool    `json:"sender"`
}

// Load reads and checks an iperf3 -J report.
func Load(path string) (*Result, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// Parse decodes and checks an iperf3 -J report.
func Parse(b []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("not an iperf3 JSON report: %w", err)
	}
	if r.Error != "" {
		return nil, fmt.Errorf("iperf3 reported an error: %s", r.Error)
	}
	if len(r.Start.Connected) == 0 {
		return nil, errors.New("iperf3 report has no connected streams (start.connected is empty)")
	}
	if len(r.Intervals) == 0 {
		return nil, errors.New("iperf3 report has no intervals")
	}
	if len(r.End.Streams) == 0 {
		return nil, errors.New("iperf3 report has no end.streams totals")
	}
	return &r, nil
}

// SenderIntervals returns the per-interval readings of the sending side
// (the server's, from --get-server-output, in reverse mode) keyed by socket.
func (r *Result) SenderIntervals() map[int][]Stream {
	src := r
	if r.Start.TestStart.Reverse != 0 && r.ServerOutput != nil {
		src = r.ServerOutput
	}
	return src.intervals(true)
}

// ReceiverIntervals returns the per-interval readings of the receiving
// side (the server's, from --get-server-output, unless in reverse mode)
// keyed by its socket, and the report they come from; none without
// --get-server-output in normal mode.
func (r *Result) ReceiverIntervals() (map[int][]Stream, *Result) {
	src := r
	if r.Start.TestStart.Reverse == 0 {
		if src = r.ServerOutput; src == nil {
			return nil, nil
		}
	}
	return src.intervals(false), src
}

func (r *Result) intervals(sender bool) map[int][]Stream {
	out := map[int][]Stream{}
	for _, iv := range r.Intervals {
		for _, s := range iv.Streams {
			if s.Sender == sender && !s.Omitted {
				out[s.Socket] = append(out[s.Socket], s)
			}
		}
	}
	return out
}
