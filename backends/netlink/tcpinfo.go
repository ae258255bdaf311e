package netlink

import (
	"encoding/binary"

	"github.com/flowd/flowd/backends"
)

// member locates one reported member of the kernel's struct tcp_info
// (include/uapi/linux/tcp.h) in the INET_DIAG_INFO attribute.
type member struct {
	field backends.Field
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
	{field: backends.FieldState, off: 0, size: 1},
	{field: backends.FieldCAState, off: 1, size: 1},
	{field: backends.FieldRetransmits, off: 2, size: 1},
	{field: backends.FieldProbes, off: 3, size: 1},
	{field: backends.FieldBackoff, off: 4, size: 1},
	{field: backends.FieldOptions, off: 5, size: 1},
	{field: backends.FieldSndWscale, off: 6, size: 1, shift: 0, bits: 4},
	{field: backends.FieldRcvWscale, off: 6, size: 1, shift: 4, bits: 4},
	{field: backends.FieldDeliveryRateAppLimited, off: 7, size: 1, shift: 0, bits: 1},
	{field: backends.FieldFastopenClientFail, off: 7, size: 1, shift: 1, bits: 2},
	{field: backends.FieldRTO, off: 8, size: 4},
	{field: backends.FieldATO, off: 12, size: 4},
	{field: backends.FieldSndMSS, off: 16, size: 4},
	{field: backends.FieldRcvMSS, off: 20, size: 4},
	{field: backends.FieldUnacked, off: 24, size: 4},
	{field: backends.FieldSacked, off: 28, size: 4},
	{field: backends.FieldLost, off: 32, size: 4},
	{field: backends.FieldRetrans, off: 36, size: 4},
	{field: backends.FieldLastDataSent, off: 44, size: 4},
	{field: backends.FieldLastDataRecv, off: 52, size: 4},
	{field: backends.FieldLastAckRecv, off: 56, size: 4},
	{field: backends.FieldPMTU, off: 60, size: 4},
	{field: backends.FieldRcvSsthresh, off: 64, size: 4},
	{field: backends.FieldRTT, off: 68, size: 4},
	{field: backends.FieldRTTVar, off: 72, size: 4},
	{field: backends.FieldSndSsthresh, off: 76, size: 4},
	{field: backends.FieldSndCwnd, off: 80, size: 4},
	{field: backends.FieldAdvMSS, off: 84, size: 4},
	{field: backends.FieldReordering, off: 88, size: 4},
	{field: backends.FieldRcvRTT, off: 92, size: 4},
	{field: backends.FieldRcvSpace, off: 96, size: 4},
	{field: backends.FieldTotalRetrans, off: 100, size: 4},
	{field: backends.FieldPacingRate, off: 104, size: 8},
	{field: backends.FieldMaxPacingRate, off: 112, size: 8},
	{field: backends.FieldBytesAcked, off: 120, size: 8},
	{field: backends.FieldBytesReceived, off: 128, size: 8},
	{field: backends.FieldSegsOut, off: 136, size: 4},
	{field: backends.FieldSegsIn, off: 140, size: 4},
	{field: backends.FieldNotsentBytes, off: 144, size: 4},
	{field: backends.FieldMinRTT, off: 148, size: 4},
	{field: backends.FieldDataSegsIn, off: 152, size: 4},
	{field: backends.FieldDataSegsOut, off: 156, size: 4},
	{field: backends.FieldDeliveryRate, off: 160, size: 8},
	{field: backends.FieldBusyTime, off: 168, size: 8},
	{field: backends.FieldRwndLimited, off: 176, size: 8},
	{field: backends.FieldSndbufLimited, off: 184, size: 8},
	{field: backends.FieldDelivered, off: 192, size: 4},
	{field: backends.FieldDeliveredCE, off: 196, size: 4},
	{field: backends.FieldBytesSent, off: 200, size: 8},
	{field: backends.FieldBytesRetrans, off: 208, size: 8},
	{field: backends.FieldDsackDups, off: 216, size: 4},
	{field: backends.FieldReordSeen, off: 220, size: 4},
	{field: backends.FieldRcvOoopack, off: 224, size: 4},
	{field: backends.FieldSndWnd, off: 228, size: 4},
	{field: backends.FieldRcvWnd, off: 232, size: 4},
	{field: backends.FieldRehash, off: 236, size: 4},
	{field: backends.FieldTotalRTO, off: 240, size: 2},
	{field: backends.FieldTotalRTORecoveries, off: 242, size: 2},
	{field: backends.FieldTotalRTOTime, off: 244, size: 4},
	{field: backends.FieldReceivedCE, off: 248, size: 4},
	{field: backends.FieldDeliveredE1Bytes, off: 252, size: 4},
	{field: backends.FieldDeliveredE0Bytes, off: 256, size: 4},
	{field: backends.FieldDeliveredCEBytes, off: 260, size: 4},
	{field: backends.FieldReceivedE1Bytes, off: 264, size: 4},
	{field: backends.FieldReceivedE0Bytes, off: 268, size: 4},
	{field: backends.FieldReceivedCEBytes, off: 272, size: 4},
}

// decodeTCPInfo fills info from b, the raw struct tcp_info of an
// INET_DIAG_INFO attribute in host byte order. The kernel sends as much of
// the struct as it knows, so a member is marked present only when b is long
// enough to hold all of it; the others are absent. It does not allocate.
func decodeTCPInfo(info *backends.TCPInfo, b []byte) {
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
