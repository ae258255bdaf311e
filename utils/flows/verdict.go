package flows

// Verdict says what limited a flow; docs/flows.md gives the rule.
type Verdict string

// Verdicts.
const (
	// VerdictApplication: the sender had nothing, or too little, to send.
	VerdictApplication Verdict = "application"
	// VerdictReceiveWindow: the peer's advertised window was full.
	VerdictReceiveWindow Verdict = "receive_window"
	// VerdictSendBuffer: the socket's send buffer held less than the
	// congestion window allowed in flight.
	VerdictSendBuffer Verdict = "send_buffer"
	// VerdictCongestion: the congestion window (or pacing) set the rate:
	// the path, its bottleneck queue, losses.
	VerdictCongestion Verdict = "congestion"
	// VerdictReceiver: the flow received more than it sent; what limited
	// it is decided at the sending end (PeerVerdict when the input has it).
	VerdictReceiver Verdict = "receiver"
	// VerdictIdle: no payload either way.
	VerdictIdle Verdict = "idle"
	// VerdictUnknown: busy_time was not read twice (kernels before 4.10,
	// output.tcp_info, a single record), so there is no span to share.
	VerdictUnknown Verdict = "unknown"
)

// Describe is the verdict in words, for tables and pages.
func (v Verdict) Describe() string {
	switch v {
	case VerdictApplication:
		return "application"
	case VerdictReceiveWindow:
		return "receive window"
	case VerdictSendBuffer:
		return "send buffer"
	case VerdictCongestion:
		return "congestion"
	}
	return string(v)
}

// Limits are shares of a flow's time (they add up to 1) by what limited
// its sending.
type Limits struct {
	Application   float64 `json:"application"`
	ReceiveWindow float64 `json:"receive_window"`
	SendBuffer    float64 `json:"send_buffer"`
	Congestion    float64 `json:"congestion"`
	// AppLimitedSamples is the share of the records taken while the flow
	// was busy that had delivery_rate_app_limited set: the part of its busy,
	// unlimited time counted as the application's.
	AppLimitedSamples float64 `json:"app_limited_samples"`
}

// Share returns the share of the verdict's cause (0 for the verdicts that
// do not weigh shares).
func (l *Limits) Share(v Verdict) float64 {
	if l == nil {
		return 0
	}
	switch v {
	case VerdictApplication:
		return l.Application
	case VerdictReceiveWindow:
		return l.ReceiveWindow
	case VerdictSendBuffer:
		return l.SendBuffer
	case VerdictCongestion:
		return l.Congestion
	}
	return 0
}

// noPayload is the most a counter of bytes moves without payload: the SYN
// and the FIN take a sequence number each.
const noPayload = 2

// sndbufEvidence is the share of its busy time a flow must have spent
// sndbuf_limited for its app-limited samples to be put down to the send
// buffer rather than to the application.
const sndbufEvidence = 0.1

// verdict applies the rule of docs/flows.md to a flow whose busy_time was
// read over duration seconds and that moved acked and received bytes.
//
// The kernel's chrono counters split the time the socket had data to send
// (busy_time) into spans limited by the receive window (rwnd_limited), by
// the send buffer (sndbuf_limited), and the rest, where the congestion
// window or the writer decides. Time outside busy_time had nothing to
// send: the application's. The rest of the busy time is split by the
// share of samples the kernel marked application-limited: the window was
// not full because too little data was queued. A writer that the kernel
// saw waiting for buffer space queues too little because of its buffer,
// so those samples count for the send buffer then.
//
// A counter read once (a single record with it, or output.tcp_info left it
// out) says nothing of what moved: such a flow is not idle but unknown.
func (f *flowState) verdict(duration float64, acked, received uint64) (Verdict, *Limits) {
	switch {
	case acked <= noPayload && received <= noPayload &&
		f.counters[cBytesAcked].spans() && f.counters[cBytesReceived].spans():
		return VerdictIdle, nil
	case received > acked:
		return VerdictReceiver, nil
	case !f.counters[cBusy].spans() || duration <= 0:
		return VerdictUnknown, nil
	}
	const usec = 1e-6
	busy := min(float64(f.counters[cBusy].delta())*usec, duration)
	rwnd := min(float64(f.counters[cRwnd].delta())*usec, busy)
	sndbuf := min(float64(f.counters[cSndbuf].delta())*usec, busy-rwnd)
	unlimited := busy - rwnd - sndbuf
	var app float64
	if f.busySamples > 0 {
		app = float64(f.appLimited) / float64(f.busySamples)
	}
	l := &Limits{
		Application:       (duration - busy) / duration,
		ReceiveWindow:     rwnd / duration,
		SendBuffer:        sndbuf / duration,
		Congestion:        (1 - app) * unlimited / duration,
		AppLimitedSamples: app,
	}
	if sndbuf >= sndbufEvidence*busy && sndbuf > 0 {
		l.SendBuffer += app * unlimited / duration
	} else {
		l.Application += app * unlimited / duration
	}
	v, _ := l.runnerUp("")
	return v, l
}

// causes are the verdicts that weigh shares of time. Ties go to the first:
// a named limit before the general ones.
var causes = []Verdict{VerdictReceiveWindow, VerdictSendBuffer, VerdictCongestion, VerdictApplication}

// runnerUp returns the cause with the largest share other than but.
func (l *Limits) runnerUp(but Verdict) (Verdict, float64) {
	var best Verdict
	share := -1.0
	for _, c := range causes {
		if c != but && l.Share(c) > share {
			best, share = c, l.Share(c)
		}
	}
	return best, share
}
