package flow

import (
	"slices"
	"testing"
)

func TestMask(t *testing.T) {
	m := MaskOf(FieldRTT, FieldState, FieldReceivedCEBytes, NumFields, FieldRTT)
	if got, want := slices.Collect(m.Fields()), []Field{FieldState, FieldRTT, FieldReceivedCEBytes}; !slices.Equal(got, want) {
		t.Errorf("MaskOf(...).Fields() = %v, want %v (ordered, no duplicates, nothing past NumFields)", got, want)
	}
	if !m.Has(FieldRTT) || m.Has(FieldSndCwnd) || m.Has(NumFields) {
		t.Errorf("Has: %v", m)
	}
	m.Clear(FieldRTT)
	m.Set(FieldSndCwnd)
	if m.Has(FieldRTT) || !m.Has(FieldSndCwnd) {
		t.Errorf("after Clear and Set: %v", m)
	}

	all := AllFields()
	if n := len(slices.Collect(all.Fields())); n != int(NumFields) {
		t.Errorf("AllFields has %d fields, want %d", n, NumFields)
	}
	if all.Has(NumFields) || all != all.Or(m) {
		t.Errorf("AllFields = %x has bits past the last field, or lacks some", all)
	}
	rest := all.AndNot(m)
	if rest.Has(FieldSndCwnd) || !rest.Has(FieldRTT) || !rest.And(m).IsEmpty() || rest.Or(m) != all {
		t.Errorf("AndNot/And/Or: %x", rest)
	}
	if !(Mask{}).IsEmpty() || m.IsEmpty() {
		t.Error("IsEmpty")
	}

	// Bits past NumFields (from a newer BPF program, say) are not fields.
	var past Mask
	past[MaskWords-1] = ^uint64(0)
	if got := slices.Collect(past.Fields()); len(got) != int(NumFields)%64 {
		t.Errorf("Fields of a word past the last field yields %v", got)
	}

	// Stopping early.
	for f := range all.Fields() {
		if f != FieldState {
			t.Fatalf("first field %v", f)
		}
		break
	}
}

func TestTCPInfoPresence(t *testing.T) {
	var info TCPInfo
	info.Set(FieldSndCwnd, 10)
	if v, ok := info.Get(FieldSndCwnd); !ok || v != 10 {
		t.Errorf("Get(snd_cwnd) = %d, %v", v, ok)
	}
	if _, ok := info.Get(FieldRTT); ok || info.Has(FieldRTT) {
		t.Error("rtt present though never set")
	}
	if info.Present != MaskOf(FieldSndCwnd) {
		t.Errorf("Present = %x", info.Present)
	}
}

func TestSetPresent(t *testing.T) {
	var info TCPInfo
	for f := range NumFields {
		info.Values[f] = 7
	}
	m := MaskOf(FieldRTT, FieldReceivedCEBytes)
	past := ^uint64(0)
	m[MaskWords-1] |= past << (NumFields % 64) // bits past the last field
	info.SetPresent(m)
	if info.Present != MaskOf(FieldRTT, FieldReceivedCEBytes) {
		t.Errorf("Present = %x, want rtt and received_ce_bytes only", info.Present)
	}
	for f := range NumFields {
		if info.Has(f) && info.Values[f] != 7 || !info.Has(f) && info.Values[f] != 0 {
			t.Errorf("%s = %d (present: %v), want 7 if present, else 0", f, info.Values[f], info.Has(f))
		}
	}
}
