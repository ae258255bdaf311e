package netlink

import (
	"encoding/binary"

	"github.com/flowd/flowd/flow"
)

// member locates one reported member of the kernel's struct tcp_info
// (include/uapi/linux/tcp.h) in the INET_DIAG_INFO attribute.
type member struct {
	field flow.Field
	off   uint16 // byte offset of the member (of the byte holding it, for bit-fields)
	size  uint8  // 1, 2, 4 or 8 bytes
	shift uint8  // bit-fields: index of the member's lowest bit in its byte
	bits  uint8  // bit-fields: width in bits; 0 for whole members
}

// end is the attribute length from which the member is present.
func (m member) end() int { return int(m.off) + int(m.size) }

// tcpInfoLayout is struct tcp_info as of Linux 6.18, in increasing order of
// end (decodeTCPInfo relies on it: it stops at the first member the
// attribute is too short to hold). tcpi_fackets (40) and tcpi_last_ack_sent
// (48) are not reported, nor are the members after tcpi_received_ce_bytes.
//
// The bit-field positions are those of little-endian ABIs, where GCC and
// Clang allocate bit-fields from the lowest bit of the byte up.
var tcpInfoLayout = [...]member{
	{field: flow.FieldState, off: 0, size: 1},
	{field: flow.FieldCAState, off: 1, size: 1},
	{field: flow.FieldRetransmits, off: 2, size: 1},
	{field: flow.FieldProbes, off: 3, size: 1},
	{field: flow.FieldBackoff, off: 4, size: 1},
	{field: flow.FieldOptions, off: 5, size: 1},
	{field: flow.FieldSndWscale, off: 6, size: 1, shift: 0, bits: 4},
	{field: flow.FieldRcvWscale, off: 6, size: 1, shift: 4, bits: 4},
	{field: flow.FieldDeliveryRateAppLimited, off: 7, size: 1, shift: 0, bits: 1},
	{field: flow.FieldFastopenClientFail, off: 7, size: 1, shift: 1, bits: 2},
	{field: flow.FieldRTO, off: 8, size: 4},
	{field: flow.FieldATO, off: 12, size: 4},
	{field: flow.FieldSndMSS, off: 16, size: 4},
	{field: flow.FieldRcvMSS, off: 20, size: 4},
	{field: flow.FieldUnacked, off: 24, size: 4},
	{field: flow.FieldSacked, off: 28, size: 4},
	{field: flow.FieldLost, off: 32, size: 4},
	{field: flow.FieldRetrans, off: 36, size: 4},
	{field: flow.FieldLastDataSent, off: 44, size: 4},
	{field: flow.FieldLastDataRecv, off: 52, size: 4},
	{field: flow.FieldLastAckRecv, off: 56, size: 4},
	{field: flow.FieldPMTU, off: 60, size: 4},
	{field: flow.FieldRcvSsthresh, off: 64, size: 4},
	{field: flow.FieldRTT, off: 68, size: 4},
	{field: flow.FieldRTTVar, off: 72, size: 4},
	{field: flow.FieldSndSsthresh, off: 76, size: 4},
	{field: flow.FieldSndCwnd, off: 80, size: 4},
	{field: flow.FieldAdvMSS, off: 84, size: 4},
	{field: flow.FieldReordering, off: 88, size: 4},
	{field: flow.FieldRcvRTT, off: 92, size: 4},
	{field: flow.FieldRcvSpace, off: 96, size: 4},
	{field: flow.FieldTotalRetrans, off: 100, size: 4},
	{field: flow.FieldPacingRate, off: 104, size: 8},
	{field: flow.FieldMaxPacingRate, off: 112, size: 8},
	{field: flow.FieldBytesAcked, off: 120, size: 8},
	{field: flow.FieldBytesReceived, off: 128, size: 8},
	{field: flow.FieldSegsOut, off: 136, size: 4},
	{field: flow.FieldSegsIn, off: 140, size: 4},
	{field: flow.FieldNotsentBytes, off: 144, size: 4},
	{field: flow.FieldMinRTT, off: 148, size: 4},
	{field: flow.FieldDataSegsIn, off: 152, size: 4},
	{field: flow.FieldDataSegsOut, off: 156, size: 4},
	{field: flow.FieldDeliveryRate, off: 160, size: 8},
	{field: flow.FieldBusyTime, off: 168, size: 8},
	{field: flow.FieldRwndLimited, off: 176, size: 8},
	{field: flow.FieldSndbufLimited, off: 184, size: 8},
	{field: flow.FieldDelivered, off: 192, size: 4},
	{field: flow.FieldDeliveredCE, off: 196, size: 4},
	{field: flow.FieldBytesSent, off: 200, size: 8},
	{field: flow.FieldBytesRetrans, off: 208, size: 8},
	{field: flow.FieldDsackDups, off: 216, size: 4},
	{field: flow.FieldReordSeen, off: 220, size: 4},
	{field: flow.FieldRcvOoopack, off: 224, size: 4},
	{field: flow.FieldSndWnd, off: 228, size: 4},
	{field: flow.FieldRcvWnd, off: 232, size: 4},
	{field: flow.FieldRehash, off: 236, size: 4},
	{field: flow.FieldTotalRTO, off: 240, size: 2},
	{field: flow.FieldTotalRTORecoveries, off: 242, size: 2},
	{field: flow.FieldTotalRTOTime, off: 244, size: 4},
	{field: flow.FieldReceivedCE, off: 248, size: 4},
	{field: flow.FieldDeliveredE1Bytes, off: 252, size: 4},
	{field: flow.FieldDeliveredE0Bytes, off: 256, size: 4},
	{field: flow.FieldDeliveredCEBytes, off: 260, size: 4},
	{field: flow.FieldReceivedE1Bytes, off: 264, size: 4},
	{field: flow.FieldReceivedE0Bytes, off: 268, size: 4},
	{field: flow.FieldReceivedCEBytes, off: 272, size: 4},
}

// decodeTCPInfo fills info from b, the raw struct tcp_info of an
// INET_DIAG_INFO attribute in host byte order. The kernel sends as much of
// the struct as it knows, so a member is marked present only when b is long
// enough to hold all of it; the others are absent. It does not allocate.
func decodeTCPInfo(info *flow.TCPInfo, b []byte) {
	info.Clear()
	for _, m := range tcpInfoLayout {
		if m.end() > len(b) {
			return
		}
		var v uint64
		switch m.size {
		case 1:
			v = uint64(b[m.off])
		case 2:
			v = uint64(binary.NativeEndian.Uint16(b[m.off:]))
		case 4:
			v = uint64(binary.NativeEndian.Uint32(b[m.off:]))
		case 8:
			v = binary.NativeEndian.Uint64(b[m.off:])
		}
		if m.bits != 0 {
			v = v >> m.shift & (1<<m.bits - 1)
		}
		info.Set(m.field, v)
	}
}
