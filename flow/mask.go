package flow

import (
	"iter"
	"math/bits"
)

// MaskWords is the number of 64-bit words in a Mask.
const MaskWords = (int(NumFields) + 63) / 64

// Mask is a set of Fields, one bit each: bit f%64 of word f/64 is Field f.
// It says which tcp_info members a record holds (TCPInfo.Present, in the
// layout the BPF program writes) or which ones an output writes. Bits past
// NumFields mean nothing; AllFields has none of them.
type Mask [MaskWords]uint64

// MaskOf returns the Mask of the listed fields; fields past NumFields are
// left out.
func MaskOf(fields ...Field) Mask {
	var m Mask
	for _, f := range fields {
		m.Set(f)
	}
	return m
}

// AllFields returns the Mask of every Field.
func AllFields() Mask { return allFields }

// allFields is computed once and only read.
var allFields = func() (m Mask) {
	for f := range NumFields {
		m.Set(f)
	}
	return m
}()

// Set adds f; a field past NumFields is ignored.
func (m *Mask) Set(f Field) {
	if f < NumFields {
		m[f/64] |= 1 << (f % 64)
	}
}

// Clear removes f.
func (m *Mask) Clear(f Field) {
	if f < NumFields {
		m[f/64] &^= 1 << (f % 64)
	}
}

// Has reports whether f is in m.
func (m Mask) Has(f Field) bool {
	return f < NumFields && m[f/64]&(1<<(f%64)) != 0
}

// And returns the fields in both m and o.
func (m Mask) And(o Mask) Mask {
	for w := range m {
		m[w] &= o[w]
	}
	return m
}

// AndNot returns the fields in m that are not in o.
func (m Mask) AndNot(o Mask) Mask {
	for w := range m {
		m[w] &^= o[w]
	}
	return m
}

// Or returns the fields in m or o.
func (m Mask) Or(o Mask) Mask {
	for w := range m {
		m[w] |= o[w]
	}
	return m
}

// IsEmpty reports whether m holds no field.
func (m Mask) IsEmpty() bool {
	return m == Mask{}
}

// Fields yields the fields in m, in Field order; bits past NumFields are
// not fields.
func (m Mask) Fields() iter.Seq[Field] {
	return func(yield func(Field) bool) {
		for w := range m {
			for word := m[w] & allFields[w]; word != 0; word &= word - 1 {
				if !yield(Field(w*64 + bits.TrailingZeros64(word))) {
					return
				}
			}
		}
	}
}
