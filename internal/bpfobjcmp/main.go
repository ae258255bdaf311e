// Command bpfobjcmp tells whether two BPF ELF objects are the same program,
// allowing for the one difference clang-19 makes between identical builds.
//
// clang-19's BTF writer numbers the forward declarations it adds at the end of
// the module (FWD types, for structs reached only through pointers) in the
// order of their DICompositeType addresses, so the same source built on
// another machine can come out with those types numbered differently. The
// program, its maps, its line and CO-RE information are unchanged; only type
// IDs inside .BTF move. `make generate-check` uses this command when a fresh
// object is not byte for byte the committed one.
//
// Two objects are the same when every section other than .BTF, .BTF.ext and
// their relocations is byte for byte the same, when their BTF holds the same
// types up to numbering, and when every program has the same instructions with
// the same function, line and CO-RE information.
//
// Usage: go run ./internal/bpfobjcmp COMMITTED.o FRESH.o
// Exit status 0: the same; 1: they differ (the first differing line of their
// descriptions is printed); 2: an object could not be read.
package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: bpfobjcmp A.o B.o")
		os.Exit(2)
	}
	a, err := describe(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bpfobjcmp:", err)
		os.Exit(2)
	}
	b, err := describe(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bpfobjcmp:", err)
		os.Exit(2)
	}
	if line, ok := firstDifference(a, b); !ok {
		fmt.Printf("%s and %s differ:\n%s\n", os.Args[1], os.Args[2], line)
		os.Exit(1)
	}
}

// firstDifference compares two descriptions line by line and reports the
// first line that is not in both, or ok when they are equal.
func firstDifference(a, b string) (line string, ok bool) {
	if a == b {
		return "", true
	}
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d\n- %s\n+ %s", i+1, x, y), false
		}
	}
	return "", true
}

// btfSections are the sections whose bytes depend on type numbering; they are
// compared through what they mean instead.
var btfSections = map[string]bool{".BTF": true, ".rel.BTF": true, ".BTF.ext": true, ".rel.BTF.ext": true}

// describe writes down everything that makes the object what it is, in a
// form that does not depend on BTF type numbering.
func describe(path string) (string, error) {
	var out strings.Builder
	w := bufio.NewWriter(&out)

	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, s := range f.Sections {
		if btfSections[s.Name] {
			continue
		}
		data := []byte(nil)
		if s.Type != elf.SHT_NOBITS {
			if data, err = s.Data(); err != nil {
				return "", fmt.Errorf("%s: section %s: %w", path, s.Name, err)
			}
		}
		fmt.Fprintf(w, "section %q type=%v flags=%v size=%d bytes=%x\n", s.Name, s.Type, s.Flags, s.Size, data)
	}

	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	for _, name := range sortedKeys(spec.Maps) {
		m := spec.Maps[name]
		fmt.Fprintf(w, "map %s %v pinning=%v extra=%d key=%s value=%s\n", name, m, m.Pinning, m.MapExtra, ref(m.Key), ref(m.Value))
	}
	for _, name := range sortedKeys(spec.Variables) {
		v := spec.Variables[name]
		var typ btf.Type
		if v.Type != nil {
			typ = v.Type
		}
		fmt.Fprintf(w, "variable %s section=%s offset=%d value=%x type=%s\n", name, v.SectionName, v.Offset, v.Value, ref(typ))
	}
	for _, name := range sortedKeys(spec.Programs) {
		p := spec.Programs[name]
		fmt.Fprintf(w, "program %s type=%v attach=%v section=%s license=%s\n", name, p.Type, p.AttachType, p.SectionName, p.License)
		for i, ins := range p.Instructions {
			fmt.Fprintf(w, "  %d: %v", i, ins)
			if fn := btf.FuncMetadata(&ins); fn != nil {
				fmt.Fprintf(w, " func=%s", ref(fn))
			}
			if line, ok := ins.Source().(*btf.Line); ok {
				fmt.Fprintf(w, " source=%s:%d:%d:%q", line.FileName(), line.LineNumber(), line.LineColumn(), line.Line())
			} else if src := ins.Source(); src != nil {
				fmt.Fprintf(w, " source=%q", src.String())
			}
			if relo := btf.CORERelocationMetadata(&ins); relo != nil {
				fmt.Fprintf(w, " core=%s", coreRelocation(relo))
			}
			if r := ins.Reference(); r != "" {
				fmt.Fprintf(w, " ref=%s", r)
			}
			if s := ins.Symbol(); s != "" {
				fmt.Fprintf(w, " symbol=%s", s)
			}
			fmt.Fprintln(w)
		}
	}

	if spec.Types != nil {
		var types []string
		for typ, err := range spec.Types.All() {
			if err != nil {
				return "", fmt.Errorf("%s: reading BTF: %w", path, err)
			}
			types = append(types, full(typ))
		}
		slices.Sort(types)
		for _, t := range types {
			fmt.Fprintf(w, "type %s\n", t)
		}
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	return out.String(), nil
}

// localID is the part of a CO-RE relocation's text that names the local type
// by its number; the type itself is printed beside it.
var localID = regexp.MustCompile(`, local_id=\d+\)$`)

func coreRelocation(relo *btf.CORERelocation) string {
	return localID.ReplaceAllString(relo.String(), ")")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ref is how a type is written where another type refers to it: a named type
// by its kind and name, an anonymous one in full.
func ref(t btf.Type) string {
	if t == nil {
		return "none"
	}
	switch t := t.(type) {
	case *btf.Struct, *btf.Union, *btf.Enum, *btf.Fwd, *btf.Typedef, *btf.Int, *btf.Float, *btf.Func, *btf.Var, *btf.Datasec:
		if name := t.TypeName(); name != "" {
			return fmt.Sprintf("%s(%s)", kind(t), name)
		}
	}
	return full(t)
}

func kind(t btf.Type) string {
	return strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", t), "*btf."))
}

// full writes a type out with everything it holds, referring to other types
// with ref.
func full(t btf.Type) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s(%s", kind(t), t.TypeName())
	switch t := t.(type) {
	case *btf.Void:
	case *btf.Int:
		fmt.Fprintf(&b, " size=%d encoding=%v", t.Size, t.Encoding)
	case *btf.Float:
		fmt.Fprintf(&b, " size=%d", t.Size)
	case *btf.Pointer:
		fmt.Fprintf(&b, " -> %s", ref(t.Target))
	case *btf.Array:
		fmt.Fprintf(&b, " [%d]%s index=%s", t.Nelems, ref(t.Type), ref(t.Index))
	case *btf.Struct:
		fmt.Fprintf(&b, " size=%d tags=%q", t.Size, t.Tags)
		members(&b, t.Members)
	case *btf.Union:
		fmt.Fprintf(&b, " size=%d tags=%q", t.Size, t.Tags)
		members(&b, t.Members)
	case *btf.Enum:
		fmt.Fprintf(&b, " size=%d signed=%t", t.Size, t.Signed)
		for _, v := range t.Values {
			fmt.Fprintf(&b, " %s=%d", v.Name, v.Value)
		}
	case *btf.Fwd:
		fmt.Fprintf(&b, " %v", t.Kind)
	case *btf.Typedef:
		fmt.Fprintf(&b, " = %s tags=%q", ref(t.Type), t.Tags)
	case *btf.Volatile:
		fmt.Fprintf(&b, " %s", ref(t.Type))
	case *btf.Const:
		fmt.Fprintf(&b, " %s", ref(t.Type))
	case *btf.Restrict:
		fmt.Fprintf(&b, " %s", ref(t.Type))
	case *btf.TypeTag:
		fmt.Fprintf(&b, " %q %s", t.Value, ref(t.Type))
	case *btf.Func:
		fmt.Fprintf(&b, " %v %s tags=%q params=%q", t.Linkage, ref(t.Type), t.Tags, t.ParamTags)
	case *btf.FuncProto:
		fmt.Fprintf(&b, " returns %s", ref(t.Return))
		for _, p := range t.Params {
			fmt.Fprintf(&b, " %s:%s", p.Name, ref(p.Type))
		}
	case *btf.Var:
		fmt.Fprintf(&b, " %v %s tags=%q", t.Linkage, ref(t.Type), t.Tags)
	case *btf.Datasec:
		fmt.Fprintf(&b, " size=%d", t.Size)
		for _, v := range t.Vars {
			fmt.Fprintf(&b, " @%d+%d:%s", v.Offset, v.Size, ref(v.Type))
		}
	default:
		fmt.Fprintf(&b, " %v", t)
	}
	b.WriteString(")")
	return b.String()
}

func members(b *bytes.Buffer, ms []btf.Member) {
	for _, m := range ms {
		fmt.Fprintf(b, " %s@%d", m.Name, m.Offset)
		if m.BitfieldSize != 0 {
			fmt.Fprintf(b, ":%d", m.BitfieldSize)
		}
		fmt.Fprintf(b, ":%s", ref(m.Type))
		if len(m.Tags) > 0 {
			fmt.Fprintf(b, "%q", m.Tags)
		}
	}
}
