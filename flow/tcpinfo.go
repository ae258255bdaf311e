package flow

import (
	"fmt"
	"math/bits"
	"strings"
)

// Field names one member of Linux's struct tcp_info (include/uapi/linux/tcp.h).
// The numbering is the bit index in the presence mask and is shared with the
// BPF program (enum flowd_field in bpf/flowd.h); a test checks they agree.
type Field uint8

// The members of struct tcp_info that flowd reports. tcpi_fackets and
// tcpi_last_ack_sent are left out: the kernel always reports them as 0.
// The AccECN option/failure fields are left out too: their uapi layout is
// still changing between kernel releases.
const (
	FieldState Field = iota
	FieldCAState
	FieldRetransmits
	FieldProbes
	FieldBackoff
	FieldOptions
	FieldSndWscale
	FieldRcvWscale
	FieldDeliveryRateAppLimited
	FieldFastopenClientFail
	FieldRTO
	FieldATO
	FieldSndMSS
	FieldRcvMSS
	FieldUnacked
	FieldSacked
	FieldLost
	FieldRetrans
	FieldLastDataSent
	FieldLastDataRecv
	FieldLastAckRecv
	FieldPMTU
	FieldRcvSsthresh
	FieldRTT
	FieldRTTVar
	FieldSndSsthresh
	FieldSndCwnd
	FieldAdvMSS
	FieldReordering
	FieldRcvRTT
	FieldRcvSpace
	FieldTotalRetrans
	FieldPacingRate
	FieldMaxPacingRate
	FieldBytesAcked
	FieldBytesReceived
	FieldSegsOut
	FieldSegsIn
	FieldNotsentBytes
	FieldMinRTT
	FieldDataSegsIn
	FieldDataSegsOut
	FieldDeliveryRate
	FieldBusyTime
	FieldRwndLimited
	FieldSndbufLimited
	FieldDelivered
	FieldDeliveredCE
	FieldBytesSent
	FieldBytesRetrans
	FieldDsackDups
	FieldReordSeen
	FieldRcvOoopack
	FieldSndWnd
	FieldRcvWnd
	FieldRehash
	FieldTotalRTO
	FieldTotalRTORecoveries
	FieldTotalRTOTime
	FieldReceivedCE
	FieldDeliveredE1Bytes
	FieldDeliveredE0Bytes
	FieldDeliveredCEBytes
	FieldReceivedE1Bytes
	FieldReceivedE0Bytes
	FieldReceivedCEBytes

	NumFields // number of fields; not a field
)

// FieldInfo describes a field: its JSON name (the tcp_info member without
// the "tcpi_" prefix) and its unit as tcp_get_info() reports it.
type FieldInfo struct {
	Name string
	Unit string
}

var fields = [NumFields]FieldInfo{
	FieldState:                  {"state", "TCP state number"},
	FieldCAState:                {"ca_state", "congestion avoidance state number"},
	FieldRetransmits:            {"retransmits", "count (unrecovered RTO timeouts)"},
	FieldProbes:                 {"probes", "count (unanswered zero-window probes)"},
	FieldBackoff:                {"backoff", "count (RTO backoff exponent)"},
	FieldOptions:                {"options", "TCPI_OPT_* bitmask"},
	FieldSndWscale:              {"snd_wscale", "shift"},
	FieldRcvWscale:              {"rcv_wscale", "shift"},
	FieldDeliveryRateAppLimited: {"delivery_rate_app_limited", "boolean"},
	FieldFastopenClientFail:     {"fastopen_client_fail", "TFO_* enum"},
	FieldRTO:                    {"rto", "µs"},
	FieldATO:                    {"ato", "µs"},
	FieldSndMSS:                 {"snd_mss", "bytes"},
	FieldRcvMSS:                 {"rcv_mss", "bytes"},
	FieldUnacked:                {"unacked", "segments"},
	FieldSacked:                 {"sacked", "segments"},
	FieldLost:                   {"lost", "segments"},
	FieldRetrans:                {"retrans", "segments"},
	FieldLastDataSent:           {"last_data_sent", "ms ago"},
	FieldLastDataRecv:           {"last_data_recv", "ms ago"},
	FieldLastAckRecv:            {"last_ack_recv", "ms ago"},
	FieldPMTU:                   {"pmtu", "bytes"},
	FieldRcvSsthresh:            {"rcv_ssthresh", "bytes"},
	FieldRTT:                    {"rtt", "µs"},
	FieldRTTVar:                 {"rttvar", "µs"},
	FieldSndSsthresh:            {"snd_ssthresh", "segments"},
	FieldSndCwnd:                {"snd_cwnd", "segments"},
	FieldAdvMSS:                 {"advmss", "bytes"},
	FieldReordering:             {"reordering", "segments"},
	FieldRcvRTT:                 {"rcv_rtt", "µs"},
	FieldRcvSpace:               {"rcv_space", "bytes"},
	FieldTotalRetrans:           {"total_retrans", "segments"},
	FieldPacingRate:             {"pacing_rate", "bytes/s"},
	FieldMaxPacingRate:          {"max_pacing_rate", "bytes/s"},
	FieldBytesAcked:             {"bytes_acked", "bytes"},
	FieldBytesReceived:          {"bytes_received", "bytes"},
	FieldSegsOut:                {"segs_out", "segments"},
	FieldSegsIn:                 {"segs_in", "segments"},
	FieldNotsentBytes:           {"notsent_bytes", "bytes"},
	FieldMinRTT:                 {"min_rtt", "µs"},
	FieldDataSegsIn:             {"data_segs_in", "segments"},
	FieldDataSegsOut:            {"data_segs_out", "segments"},
	FieldDeliveryRate:           {"delivery_rate", "bytes/s"},
	FieldBusyTime:               {"busy_time", "µs"},
	FieldRwndLimited:            {"rwnd_limited", "µs"},
	FieldSndbufLimited:          {"sndbuf_limited", "µs"},
	FieldDelivered:              {"delivered", "segments"},
	FieldDeliveredCE:            {"delivered_ce", "segments"},
	FieldBytesSent:              {"bytes_sent", "bytes"},
	FieldBytesRetrans:           {"bytes_retrans", "bytes"},
	FieldDsackDups:              {"dsack_dups", "count"},
	FieldReordSeen:              {"reord_seen", "count"},
	FieldRcvOoopack:             {"rcv_ooopack", "packets"},
	FieldSndWnd:                 {"snd_wnd", "bytes"},
	FieldRcvWnd:                 {"rcv_wnd", "bytes"},
	FieldRehash:                 {"rehash", "count"},
	FieldTotalRTO:               {"total_rto", "count"},
	FieldTotalRTORecoveries:     {"total_rto_recoveries", "count"},
	FieldTotalRTOTime:           {"total_rto_time", "ms"},
	FieldReceivedCE:             {"received_ce", "packets"},
	FieldDeliveredE1Bytes:       {"delivered_e1_bytes", "bytes"},
	FieldDeliveredE0Bytes:       {"delivered_e0_bytes", "bytes"},
	FieldDeliveredCEBytes:       {"delivered_ce_bytes", "bytes"},
	FieldReceivedE1Bytes:        {"received_e1_bytes", "bytes"},
	FieldReceivedE0Bytes:        {"received_e0_bytes", "bytes"},
	FieldReceivedCEBytes:        {"received_ce_bytes", "bytes"},
}

// Name is the field's JSON key, e.g. "snd_cwnd".
func (f Field) Name() string {
	if f < NumFields {
		return fields[f].Name
	}
	return "unknown"
}

// Unit is the field's unit as docs/schema.md documents it.
func (f Field) Unit() string {
	if f < NumFields {
		return fields[f].Unit
	}
	return ""
}

func (f Field) String() string { return f.Name() }

// FieldByName looks a field up by its JSON key.
func FieldByName(name string) (Field, bool) {
	for i := range fields {
		if fields[i].Name == name {
			return Field(i), true
		}
	}
	return 0, false
}

// MarshalText returns the field's name.
func (f Field) MarshalText() ([]byte, error) {
	if f >= NumFields {
		return nil, fmt.Errorf("%d is not a tcp_info member", f)
	}
	return []byte(f.Name()), nil
}

// UnmarshalText reads a field's name. The error suggests the members whose
// names contain the text (cwnd: snd_cwnd).
func (f *Field) UnmarshalText(text []byte) error {
	name := string(text)
	if v, ok := FieldByName(name); ok {
		*f = v
		return nil
	}
	var near []string
	for i := range fields {
		if name != "" && strings.Contains(fields[i].Name, strings.ToLower(name)) {
			near = append(near, fields[i].Name)
		}
	}
	if len(near) == 0 || len(near) > 4 {
		return fmt.Errorf("%q is not a tcp_info member (docs/schema.md lists the members)", name)
	}
	return fmt.Errorf("%q is not a tcp_info member (did you mean %s?)", name, strings.Join(near, ", "))
}

// TCPInfo holds the tcp_info members of one record. A member the kernel
// could not provide is absent (not in Present), never 0.
type TCPInfo struct {
	Present Mask
	Values  [NumFields]uint64
}

// Set stores v for f and marks it present.
func (t *TCPInfo) Set(f Field, v uint64) {
	t.Values[f] = v
	t.Present.Set(f)
}

// Has reports whether f is present.
func (t *TCPInfo) Has(f Field) bool { return t.Present.Has(f) }

// SetPresent makes the fields in m, and no others, present, and zeroes the
// values of the others, so that a reused TCPInfo keeps nothing stale.
// Bits past NumFields are dropped.
func (t *TCPInfo) SetPresent(m Mask) {
	for w := range m {
		t.Present[w] = m[w] & allFields[w]
		for absent := allFields[w] &^ m[w]; absent != 0; absent &= absent - 1 {
			t.Values[w*64+bits.TrailingZeros64(absent)] = 0
		}
	}
}

// Get returns f's value and whether it is present.
func (t *TCPInfo) Get(f Field) (uint64, bool) {
	if !t.Has(f) {
		return 0, false
	}
	return t.Values[f], true
}

// Clear marks every field absent.
func (t *TCPInfo) Clear() {
	*t = TCPInfo{}
}
