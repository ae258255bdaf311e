package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The committed object: it has forward declarations, as every build of the
// sockops program does.
const object = "../../backends/ebpf/bpf_bpfel.o"

// BTF kinds, from include/uapi/linux/btf.h.
const (
	kindInt = iota + 1
	kindPtr
	kindArray
	kindStruct
	kindUnion
	kindEnum
	kindFwd
	kindTypedef
	kindVolatile
	kindConst
	kindRestrict
	kindFunc
	kindFuncProto
	kindVar
	kindDatasec
	kindFloat
	kindDeclTag
	kindTypeTag
	kindEnum64
)

// btfTypes walks the type section of a raw .BTF blob: for each type (IDs from
// 1) it gives the offset of its struct btf_type in the blob and the offsets of
// every field in it that holds a type ID.
type btfType struct {
	off, kind int
	refs      []int
}

func btfTypes(t *testing.T, raw []byte) []btfType {
	t.Helper()
	le := binary.LittleEndian
	if le.Uint16(raw) != 0xeb9f {
		t.Fatalf("not little-endian BTF: magic %#x", le.Uint16(raw))
	}
	hdrLen, typeOff, typeLen := int(le.Uint32(raw[4:])), int(le.Uint32(raw[8:])), int(le.Uint32(raw[12:]))
	var types []btfType
	for off, end := hdrLen+typeOff, hdrLen+typeOff+typeLen; off < end; {
		info := le.Uint32(raw[off+4:])
		kind, vlen := int(info>>24&0x1f), int(info&0xffff)
		typ := btfType{off: off, kind: kind}
		data := off + 12
		switch kind {
		case kindPtr, kindTypedef, kindVolatile, kindConst, kindRestrict, kindFunc, kindTypeTag:
			typ.refs = []int{off + 8}
		case kindVar:
			typ.refs = []int{off + 8}
			data += 4
		case kindDeclTag:
			typ.refs = []int{off + 8}
			data += 4
		case kindInt:
			data += 4
		case kindArray:
			typ.refs = []int{data, data + 4}
			data += 12
		case kindStruct, kindUnion:
			for i := range vlen {
				typ.refs = append(typ.refs, data+12*i+4)
			}
			data += 12 * vlen
		case kindEnum:
			data += 8 * vlen
		case kindEnum64:
			data += 12 * vlen
		case kindFuncProto:
			typ.refs = []int{off + 8}
			for i := range vlen {
				typ.refs = append(typ.refs, data+8*i+4)
			}
			data += 8 * vlen
		case kindDatasec:
			for i := range vlen {
				typ.refs = append(typ.refs, data+12*i)
			}
			data += 12 * vlen
		case kindFwd, kindFloat:
		default:
			t.Fatalf("BTF kind %d at %d: not known to this test", kind, off)
		}
		types = append(types, typ)
		off = data
	}
	return types
}

// withBTF returns a copy of the object file with edit applied to its .BTF
// section in place (the section keeps its size).
func withBTF(t *testing.T, obj []byte, edit func(raw []byte)) []byte {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(".BTF")
	if s == nil {
		t.Fatal("no .BTF section")
	}
	out := bytes.Clone(obj)
	edit(out[s.Offset : s.Offset+s.Size])
	return out
}

// swapFwds swaps the first two forward declarations in the type section,
// as clang-19 may number them on another machine; with fixRefs it also
// renumbers the references to them, so the types mean what they meant.
func swapFwds(t *testing.T, fixRefs bool) func(raw []byte) {
	return func(raw []byte) {
		le := binary.LittleEndian
		types := btfTypes(t, raw)
		var fwds []int // type IDs
		for i, typ := range types {
			if typ.kind == kindFwd {
				fwds = append(fwds, i+1)
			}
		}
		if len(fwds) < 2 {
			t.Fatalf("%d forward declarations, need two", len(fwds))
		}
		a, b := fwds[0], fwds[1]
		ra, rb := raw[types[a-1].off:types[a-1].off+12], raw[types[b-1].off:types[b-1].off+12]
		tmp := bytes.Clone(ra)
		copy(ra, rb)
		copy(rb, tmp)
		if !fixRefs {
			return
		}
		renumbered := 0
		for _, typ := range types {
			for _, r := range typ.refs {
				switch int(le.Uint32(raw[r:])) {
				case a:
					le.PutUint32(raw[r:], uint32(b))
					renumbered++
				case b:
					le.PutUint32(raw[r:], uint32(a))
					renumbered++
				}
			}
		}
		if renumbered == 0 {
			t.Fatal("no type refers to the forward declarations")
		}
	}
}

func describeBytes(t *testing.T, obj []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "obj.o")
	if err := os.WriteFile(path, obj, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := describe(path)
	if err != nil {
		t.Fatalf("describe: %v", err)
	}
	return d
}

func TestDescribe(t *testing.T) {
	obj, err := os.ReadFile(object)
	if err != nil {
		t.Fatal(err)
	}
	orig := describeBytes(t, obj)
	for _, want := range []string{"program flowd_sockops type=SockOps", "map events RingBuf", "source=../../bpf/flowd.bpf.c:", "core=CORERelocation(", "type fwd("} {
		if !strings.Contains(orig, want) {
			t.Errorf("the description lacks %q", want)
		}
	}

	tests := []struct {
		name string
		edit func([]byte) []byte
		same bool
	}{
		{"forward declarations renumbered", func(o []byte) []byte { return withBTF(t, o, swapFwds(t, true)) }, true},
		{"pointers to other structs", func(o []byte) []byte { return withBTF(t, o, swapFwds(t, false)) }, false},
		{"one instruction changed", func(o []byte) []byte {
			f, err := elf.NewFile(bytes.NewReader(o))
			if err != nil {
				t.Fatal(err)
			}
			s := f.Section("sockops")
			out := bytes.Clone(o)
			out[s.Offset+8*10+4]++ // the immediate of the eleventh instruction
			return out
		}, false},
		{"one source line changed", func(o []byte) []byte {
			return withBTF(t, o, func(raw []byte) {
				i := bytes.Index(raw, []byte("skops->op;"))
				if i < 0 {
					t.Fatal("line text not found in .BTF")
				}
				raw[i] = 'S'
			})
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			edited := tt.edit(obj)
			if bytes.Equal(edited, obj) {
				t.Fatal("the edit changed nothing")
			}
			got := describeBytes(t, edited)
			line, same := firstDifference(orig, got)
			if same != tt.same {
				t.Errorf("same = %t, want %t (first difference: %s)", same, tt.same, line)
			}
		})
	}
}
