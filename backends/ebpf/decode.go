package ebpf

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"time"
	"unsafe"

	"github.com/flowd/flowd/backends"
)

const (
	afInet  = 2
	afInet6 = 10
)

// recordSize is the size of struct flowd_record.
const recordSize = int(unsafe.Sizeof(bpfFlowdRecord{}))

var errShortRecord = errors.New("short record")

// decoder turns raw ring buffer samples into records. It converts the
// kernel's CLOCK_MONOTONIC timestamps to wall-clock time with an offset
// measured once at start.
type decoder struct {
	monoToWall int64 // wall ns - monotonic ns
}

// decode fills r from one sample. raw must hold a whole struct flowd_record.
func (d *decoder) decode(raw []byte, r *backends.Record) error {
	if len(raw) < recordSize {
		return fmt.Errorf("%w: %d bytes, want %d", errShortRecord, len(raw), recordSize)
	}
	// The sample is a struct flowd_record in host byte order; bpf2go's
	// bpfFlowdRecord has the same layout (checked by TestLayout).
	k := (*bpfFlowdRecord)(unsafe.Pointer(unsafe.SliceData(raw)))

	r.Time = time.Unix(0, int64(k.TimestampNs)+d.monoToWall).UTC()
	r.Backend = Name
	r.Event = backends.Event(k.Event)
	r.Cookie = k.Cookie
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
	r.State = backends.State(k.NewState)
	r.OldState = 0
	if r.Event == backends.EventState {
		r.OldState = backends.State(k.OldState)
	}
	r.CA = caName(&k.Ca)
	decodeInfo(&k.Info, k.Present, &r.Info)
	return nil
}

// caName returns the NUL-terminated name without allocating for the
// congestion controls the kernel ships.
func caName(b *[16]int8) string {
	raw := (*[16]byte)(unsafe.Pointer(b))
	n := 0
	for n < len(raw) && raw[n] != 0 {
		n++
	}
	name := raw[:n]
	for _, known := range knownCA {
		if string(name) == known { // no allocation: compiler-optimised comparison
			return known
		}
	}
	return string(name)
}

var knownCA = [...]string{"cubic", "bbr", "reno", "dctcp", "htcp", "vegas", "westwood", "bic", "highspeed", "hybla", "illinois", "lp", "nv", "scalable", "veno", "yeah", "cdg"}

// decodeInfo copies the kernel's tcp_info-like struct into the shared form.
func decodeInfo(k *bpfFlowdTcpInfo, present [2]uint64, t *backends.TCPInfo) {
	v := &t.Values
	v[backends.FieldState] = uint64(k.State)
	v[backends.FieldCAState] = uint64(k.CaState)
	v[backends.FieldRetransmits] = uint64(k.Retransmits)
	v[backends.FieldProbes] = uint64(k.Probes)
	v[backends.FieldBackoff] = uint64(k.Backoff)
	v[backends.FieldOptions] = uint64(k.Options)
	v[backends.FieldSndWscale] = uint64(k.SndWscale)
	v[backends.FieldRcvWscale] = uint64(k.RcvWscale)
	v[backends.FieldDeliveryRateAppLimited] = uint64(k.DeliveryRateAppLimited)
	v[backends.FieldFastopenClientFail] = uint64(k.FastopenClientFail)
	v[backends.FieldRTO] = uint64(k.Rto)
	v[backends.FieldATO] = uint64(k.Ato)
	v[backends.FieldSndMSS] = uint64(k.SndMss)
	v[backends.FieldRcvMSS] = uint64(k.RcvMss)
	v[backends.FieldUnacked] = uint64(k.Unacked)
	v[backends.FieldSacked] = uint64(k.Sacked)
	v[backends.FieldLost] = uint64(k.Lost)
	v[backends.FieldRetrans] = uint64(k.Retrans)
	v[backends.FieldLastDataSent] = uint64(k.LastDataSent)
	v[backends.FieldLastDataRecv] = uint64(k.LastDataRecv)
	v[backends.FieldLastAckRecv] = uint64(k.LastAckRecv)
	v[backends.FieldPMTU] = uint64(k.Pmtu)
	v[backends.FieldRcvSsthresh] = uint64(k.RcvSsthresh)
	v[backends.FieldRTT] = uint64(k.Rtt)
	v[backends.FieldRTTVar] = uint64(k.Rttvar)
	v[backends.FieldSndSsthresh] = uint64(k.SndSsthresh)
	v[backends.FieldSndCwnd] = uint64(k.SndCwnd)
	v[backends.FieldAdvMSS] = uint64(k.Advmss)
	v[backends.FieldReordering] = uint64(k.Reordering)
	v[backends.FieldRcvRTT] = uint64(k.RcvRtt)
	v[backends.FieldRcvSpace] = uint64(k.RcvSpace)
	v[backends.FieldTotalRetrans] = uint64(k.TotalRetrans)
	v[backends.FieldPacingRate] = k.PacingRate
	v[backends.FieldMaxPacingRate] = k.MaxPacingRate
	v[backends.FieldBytesAcked] = k.BytesAcked
	v[backends.FieldBytesReceived] = k.BytesReceived
	v[backends.FieldSegsOut] = uint64(k.SegsOut)
	v[backends.FieldSegsIn] = uint64(k.SegsIn)
	v[backends.FieldNotsentBytes] = uint64(k.NotsentBytes)
	v[backends.FieldMinRTT] = uint64(k.MinRtt)
	v[backends.FieldDataSegsIn] = uint64(k.DataSegsIn)
	v[backends.FieldDataSegsOut] = uint64(k.DataSegsOut)
	v[backends.FieldDeliveryRate] = k.DeliveryRate
	v[backends.FieldBusyTime] = k.BusyTime
	v[backends.FieldRwndLimited] = k.RwndLimited
	v[backends.FieldSndbufLimited] = k.SndbufLimited
	v[backends.FieldDelivered] = uint64(k.Delivered)
	v[backends.FieldDeliveredCE] = uint64(k.DeliveredCe)
	v[backends.FieldBytesSent] = k.BytesSent
	v[backends.FieldBytesRetrans] = k.BytesRetrans
	v[backends.FieldDsackDups] = uint64(k.DsackDups)
	v[backends.FieldReordSeen] = uint64(k.ReordSeen)
	v[backends.FieldRcvOoopack] = uint64(k.RcvOoopack)
	v[backends.FieldSndWnd] = uint64(k.SndWnd)
	v[backends.FieldRcvWnd] = uint64(k.RcvWnd)
	v[backends.FieldRehash] = uint64(k.Rehash)
	v[backends.FieldTotalRTO] = uint64(k.TotalRto)
	v[backends.FieldTotalRTORecoveries] = uint64(k.TotalRtoRecoveries)
	v[backends.FieldTotalRTOTime] = uint64(k.TotalRtoTime)
	v[backends.FieldReceivedCE] = uint64(k.ReceivedCe)
	v[backends.FieldDeliveredE1Bytes] = uint64(k.DeliveredE1Bytes)
	v[backends.FieldDeliveredE0Bytes] = uint64(k.DeliveredE0Bytes)
	v[backends.FieldDeliveredCEBytes] = uint64(k.DeliveredCeBytes)
	v[backends.FieldReceivedE1Bytes] = uint64(k.ReceivedE1Bytes)
	v[backends.FieldReceivedE0Bytes] = uint64(k.ReceivedE0Bytes)
	v[backends.FieldReceivedCEBytes] = uint64(k.ReceivedCeBytes)

	// Only the bits of fields flowd knows; absent values are zeroed so that
	// nothing stale is kept in a reused record.
	for w := range t.Present {
		t.Present[w] = present[w] & presenceMask[w]
		for absent := presenceMask[w] &^ present[w]; absent != 0; absent &= absent - 1 {
			v[w*64+bits.TrailingZeros64(absent)] = 0
		}
	}
}

var presenceMask = func() (m [backends.PresenceWords]uint64) {
	for f := backends.Field(0); f < backends.NumFields; f++ {
		m[f/64] |= 1 << (f % 64)
	}
	return m
}()
