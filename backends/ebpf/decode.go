package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/flowd/flowd/flow"
)

const (
	afInet  = 2
	afInet6 = 10
)

// recordSize is the size of struct flowd_record, and headSize that of
// struct flowd_head, a record without tcp_info (a state record in poll
// mode).
const (
	recordSize = int(unsafe.Sizeof(bpfFlowdRecord{}))
	headSize   = int(unsafe.Sizeof(bpfFlowdHead{}))
)

var errShortRecord = errors.New("short record")

// decoder turns raw ring buffer samples into records. It converts the
// kernel's CLOCK_MONOTONIC timestamps to wall-clock time with an offset
// measured once at start.
type decoder struct {
	monoToWall int64 // wall ns - monotonic ns
	// comms are process names decoded lately, so that the records of the
	// few processes that make most connections do not allocate theirs.
	comms    [8]string
	nextComm int // the entry of comms to replace next
}

// decode fills r from one sample: a whole struct flowd_record, or a struct
// flowd_head alone, which leaves r's tcp_info empty.
func (d *decoder) decode(raw []byte, r *flow.Record) error {
	if len(raw) < headSize || (len(raw) > headSize && len(raw) < recordSize) {
		return fmt.Errorf("%w: %d bytes, want %d or %d", errShortRecord, len(raw), headSize, recordSize)
	}
	// The sample is a struct flowd_record or flowd_head in host byte
	// order; bpf2go's bpfFlowdRecord and bpfFlowdHead have the same
	// layouts (checked by TestLayout).
	k := (*bpfFlowdHead)(unsafe.Pointer(unsafe.SliceData(raw)))

	r.Time = time.Unix(0, int64(k.TimestampNs)+d.monoToWall).UTC()
	r.Backend = flow.BackendEBPF
	r.Event = flow.Event(k.Event)
	r.Cookie = k.Cookie
	r.Existing = r.Event == flow.EventOpen && k.Flags&uint8(bpfFlowdRecordFlagFLOWD_RECORD_EXISTING) != 0
	r.CgroupID = k.CgroupId
	r.LocalPort = k.Lport
	r.RemotePort = k.Rport
	switch k.Family {
	case afInet:
		r.Family = 4
		r.LocalAddr = netip.AddrFrom4([4]byte(k.Laddr[:4]))
		r.RemoteAddr = netip.AddrFrom4([4]byte(k.Raddr[:4]))
	case afInet6:
		r.Family = 6
		r.LocalAddr = netip.AddrFrom16(k.Laddr)
		r.RemoteAddr = netip.AddrFrom16(k.Raddr)
	default:
		return fmt.Errorf("record with unknown address family %d", k.Family)
	}
	r.State = flow.State(k.NewState)
	r.OldState = 0
	if r.Event == flow.EventState || r.Event == flow.EventClose {
		r.OldState = flow.State(k.OldState)
	}
	r.CA = caName(&k.Ca)
	r.PID, r.Comm = 0, ""
	if k.Pid != 0 {
		r.PID, r.Comm = k.Pid, d.comm(&k.Comm)
	}
	if len(raw) == headSize {
		r.Info.SetPresent(flow.Mask{})
		return nil
	}
	full := (*bpfFlowdRecord)(unsafe.Pointer(k))
	decodeInfo(&full.Info, flow.Mask(full.Present), &r.Info)
	return nil
}

// caName returns the NUL-terminated name without allocating for the
// congestion controls the kernel ships.
func caName(b *[16]int8) string {
	name := cBytes(b)
	for _, known := range knownCA {
		if string(name) == known { // no allocation: compiler-optimised comparison
			return known
		}
	}
	return string(name)
}

// cBytes returns the bytes of a NUL-terminated string, without the NUL.
func cBytes(b *[16]int8) []byte {
	raw := (*[16]byte)(unsafe.Pointer(b))
	n := 0
	for n < len(raw) && raw[n] != 0 {
		n++
	}
	return raw[:n]
}

// comm returns the NUL-terminated process name b, from comms when it was
// decoded lately.
func (d *decoder) comm(b *[16]int8) string {
	name := cBytes(b)
	for _, c := range d.comms {
		if string(name) == c {
			return c
		}
	}
	c := string(name)
	d.comms[d.nextComm] = c
	d.nextComm = (d.nextComm + 1) % len(d.comms)
	return c
}

var knownCA = [...]string{"cubic", "bbr", "reno", "dctcp", "htcp", "vegas", "westwood", "bic", "highspeed", "hybla", "illinois", "lp", "nv", "scalable", "veno", "yeah", "cdg"}

// decodeInfo copies the kernel's tcp_info-like struct into the shared form.
func decodeInfo(k *bpfFlowdTcpInfo, present flow.Mask, t *flow.TCPInfo) {
	v := &t.Values
	v[flow.FieldState] = uint64(k.State)
	v[flow.FieldCAState] = uint64(k.CaState)
	v[flow.FieldRetransmits] = uint64(k.Retransmits)
	v[flow.FieldProbes] = uint64(k.Probes)
	v[flow.FieldBackoff] = uint64(k.Backoff)
	v[flow.FieldOptions] = uint64(k.Options)
	v[flow.FieldSndWscale] = uint64(k.SndWscale)
	v[flow.FieldRcvWscale] = uint64(k.RcvWscale)
	v[flow.FieldDeliveryRateAppLimited] = uint64(k.DeliveryRateAppLimited)
	v[flow.FieldFastopenClientFail] = uint64(k.FastopenClientFail)
	v[flow.FieldRTO] = uint64(k.Rto)
	v[flow.FieldATO] = uint64(k.Ato)
	v[flow.FieldSndMSS] = uint64(k.SndMss)
	v[flow.FieldRcvMSS] = uint64(k.RcvMss)
	v[flow.FieldUnacked] = uint64(k.Unacked)
	v[flow.FieldSacked] = uint64(k.Sacked)
	v[flow.FieldLost] = uint64(k.Lost)
	v[flow.FieldRetrans] = uint64(k.Retrans)
	v[flow.FieldLastDataSent] = uint64(k.LastDataSent)
	v[flow.FieldLastDataRecv] = uint64(k.LastDataRecv)
	v[flow.FieldLastAckRecv] = uint64(k.LastAckRecv)
	v[flow.FieldPMTU] = uint64(k.Pmtu)
	v[flow.FieldRcvSsthresh] = uint64(k.RcvSsthresh)
	v[flow.FieldRTT] = uint64(k.Rtt)
	v[flow.FieldRTTVar] = uint64(k.Rttvar)
	v[flow.FieldSndSsthresh] = uint64(k.SndSsthresh)
	v[flow.FieldSndCwnd] = uint64(k.SndCwnd)
	v[flow.FieldAdvMSS] = uint64(k.Advmss)
	v[flow.FieldReordering] = uint64(k.Reordering)
	v[flow.FieldRcvRTT] = uint64(k.RcvRtt)
	v[flow.FieldRcvSpace] = uint64(k.RcvSpace)
	v[flow.FieldTotalRetrans] = uint64(k.TotalRetrans)
	v[flow.FieldPacingRate] = k.PacingRate
	v[flow.FieldMaxPacingRate] = k.MaxPacingRate
	v[flow.FieldBytesAcked] = k.BytesAcked
	v[flow.FieldBytesReceived] = k.BytesReceived
	v[flow.FieldSegsOut] = uint64(k.SegsOut)
	v[flow.FieldSegsIn] = uint64(k.SegsIn)
	v[flow.FieldNotsentBytes] = uint64(k.NotsentBytes)
	v[flow.FieldMinRTT] = uint64(k.MinRtt)
	v[flow.FieldDataSegsIn] = uint64(k.DataSegsIn)
	v[flow.FieldDataSegsOut] = uint64(k.DataSegsOut)
	v[flow.FieldDeliveryRate] = k.DeliveryRate
	v[flow.FieldBusyTime] = k.BusyTime
	v[flow.FieldRwndLimited] = k.RwndLimited
	v[flow.FieldSndbufLimited] = k.SndbufLimited
	v[flow.FieldDelivered] = uint64(k.Delivered)
	v[flow.FieldDeliveredCE] = uint64(k.DeliveredCe)
	v[flow.FieldBytesSent] = k.BytesSent
	v[flow.FieldBytesRetrans] = k.BytesRetrans
	v[flow.FieldDsackDups] = uint64(k.DsackDups)
	v[flow.FieldReordSeen] = uint64(k.ReordSeen)
	v[flow.FieldRcvOoopack] = uint64(k.RcvOoopack)
	v[flow.FieldSndWnd] = uint64(k.SndWnd)
	v[flow.FieldRcvWnd] = uint64(k.RcvWnd)
	v[flow.FieldRehash] = uint64(k.Rehash)
	v[flow.FieldTotalRTO] = uint64(k.TotalRto)
	v[flow.FieldTotalRTORecoveries] = uint64(k.TotalRtoRecoveries)
	v[flow.FieldTotalRTOTime] = uint64(k.TotalRtoTime)
	v[flow.FieldReceivedCE] = uint64(k.ReceivedCe)
	v[flow.FieldDeliveredE1Bytes] = uint64(k.DeliveredE1Bytes)
	v[flow.FieldDeliveredE0Bytes] = uint64(k.DeliveredE0Bytes)
	v[flow.FieldDeliveredCEBytes] = uint64(k.DeliveredCeBytes)
	v[flow.FieldReceivedE1Bytes] = uint64(k.ReceivedE1Bytes)
	v[flow.FieldReceivedE0Bytes] = uint64(k.ReceivedE0Bytes)
	v[flow.FieldReceivedCEBytes] = uint64(k.ReceivedCeBytes)
	t.SetPresent(present)
}
