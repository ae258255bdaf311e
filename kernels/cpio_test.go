package kernels

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// cpioEntry is one entry as read back by readCPIO.
type cpioEntry struct {
	name         string
	mode, nlink  uint32
	rmaj, rmin   uint32
	data         string
	headerOffset int
}

// readCPIO is an independent newc reader, strict about what the kernel's
// unpacker (init/initramfs.c) relies on: the magic, hex fields, the NUL
// terminated name, 4-byte alignment of the name and of the data, and a
// trailer at the end.
func readCPIO(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	for {
		if off%4 != 0 {
			t.Fatalf("entry at %d is not 4-byte aligned", off)
		}
		if len(b)-off < 110 {
			t.Fatalf("truncated header at %d", off)
		}
		h := string(b[off : off+110])
		if h[:6] != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(h[6+8*i:14+8*i], 16, 32)
			if err != nil {
				t.Fatalf("field %d of the header at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		e := cpioEntry{mode: field(1), nlink: field(4), rmaj: field(9), rmin: field(10), headerOffset: off}
		size, nameSize := int(field(6)), int(field(11))
		if field(12) != 0 {
			t.Fatalf("check field set in newc header at %d", off)
		}
		name := b[off+110 : off+110+nameSize]
		if name[nameSize-1] != 0 {
			t.Fatalf("name at %d is not NUL terminated", off)
		}
		e.name = string(name[:nameSize-1])
		dataOff := off + 110 + nameSize
		dataOff += pad4(dataOff)
		for _, p := range b[off+110+nameSize : dataOff] {
			if p != 0 {
				t.Fatalf("non-zero padding after the name of %s", e.name)
			}
		}
		e.data = string(b[dataOff : dataOff+size])
		off = dataOff + size
		off += pad4(off)
		if e.name == cpioTrailer {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

func TestCPIOGolden(t *testing.T) {
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	if err := w.File("init", 0o755, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// One file, then the trailer: header (110) + "init\0" (5) + 1 pad,
	// data "hello" + 3 pad; header + "TRAILER!!!\0" (11) + 3 pad.
	want := "070701" + "000493e1" + "000081ed" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000005" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000" +
		"init\x00\x00" + "hello\x00\x00\x00" +
		"070701" + "000493e2" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000b" + "00000000" +
		"TRAILER!!!\x00" + "\x00\x00\x00"
	if got := buf.String(); got != want {
		t.Errorf("archive:\n%q\nwant\n%q", got, want)
	}
}

func TestCPIOEntries(t *testing.T) {
	var buf bytes.Buffer
	w := NewCPIOWriter(&buf)
	steps := []func() error{
		func() error { return w.Dir("dev", 0o755) },
		func() error { return w.CharDev("/dev/console", 0o600, 5, 1) },
		func() error { return w.File("a/b/c.txt", 0o644, []byte("abc")) }, // makes a and a/b
		func() error { return w.File("a/b/empty", 0o600, nil) },
		func() error {
			return w.FileFrom("x", 0o700, 7, strings.NewReader("1234567 and more"))
		},
		func() error { return w.Dir("a", 0o700) }, // already there: no second entry
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, buf.Bytes())
	want := []struct {
		name string
		mode uint32
		data string
	}{
		{"dev", 0o040755, ""},
		{"dev/console", 0o020600, ""},
		{"a", 0o040755, ""},
		{"a/b", 0o040755, ""},
		{"a/b/c.txt", 0o100644, "abc"},
		{"a/b/empty", 0o100600, ""},
		{"x", 0o100700, "1234567"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	inodes := map[uint32]bool{}
	for i, w := range want {
		g := got[i]
		if g.name != w.name || g.mode != w.mode || g.data != w.data {
			t.Errorf("entry %d: %q mode %o data %q, want %q mode %o data %q", i, g.name, g.mode, g.data, w.name, w.mode, w.data)
		}
		ino := binaryField(t, buf.Bytes(), g.headerOffset, 0)
		if inodes[ino] {
			t.Errorf("entry %s reuses inode %d", g.name, ino)
		}
		inodes[ino] = true
	}
	if c := got[1]; c.rmaj != 5 || c.rmin != 1 {
		t.Errorf("dev/console is %d:%d, want 5:1", c.rmaj, c.rmin)
	}
}

func binaryField(t *testing.T, b []byte, off, i int) uint32 {
	v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(v)
}

func TestCPIOErrors(t *testing.T) {
	w := NewCPIOWriter(io.Discard)
	for _, name := range []string{"../etc", "TRAILER!!!"} {
		if err := w.File(name, 0o644, nil); err == nil {
			t.Errorf("File(%q) accepted", name)
		}
	}
	if err := w.FileFrom("short", 0o644, 10, strings.NewReader("abc")); err == nil {
		t.Error("FileFrom with less data than its size succeeded")
	}
	if err := w.File("after", 0o644, nil); err == nil {
		t.Error("the writer went on after a failed entry")
	}

	w = NewCPIOWriter(failWriter{})
	if err := w.File("x", 0o644, []byte("x")); err == nil {
		t.Error("a write error was not returned")
	}

	w = NewCPIOWriter(io.Discard)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.File("late", 0o644, nil); err == nil {
		t.Error("File after Close succeeded")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, fmt.Errorf("disk full") }

func TestWriteInitramfs(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(src, []byte("#!binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	plan := &Plan{Modules: []string{"/lib/modules/x/kernel/a.ko"}, Steps: []Step{{Name: "ebpf", Path: "/flowd/bin/ebpf.test", Args: []string{"-test.v"}}}}
	var buf bytes.Buffer
	err := WriteInitramfs(&buf, plan, []InitramfsFile{
		{Name: "init", Source: src},
		{Name: "etc/motd", Data: []byte("hi"), Mode: 0o644},
	})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]cpioEntry{}
	for _, e := range readCPIO(t, raw) {
		entries[e.name] = e
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "flowd", "etc"} {
		if e, ok := entries[d]; !ok || e.mode&cpioModeDir == 0 {
			t.Errorf("no directory %s", d)
		}
	}
	if e := entries["dev/console"]; e.mode != cpioModeChr|0o600 || e.rmaj != 5 || e.rmin != 1 {
		t.Errorf("dev/console: %+v", e)
	}
	if e := entries["init"]; e.data != "#!binary" || e.mode != cpioModeFile|0o755 {
		t.Errorf("init: mode %o data %q", e.mode, e.data)
	}
	if e := entries["etc/motd"]; e.data != "hi" || e.mode != cpioModeFile|0o644 {
		t.Errorf("etc/motd: mode %o data %q", e.mode, e.data)
	}
	var got Plan
	if err := json.Unmarshal([]byte(entries[PlanPath].data), &got); err != nil {
		t.Fatalf("plan: %v", err)
	}
	if len(got.Steps) != 1 || got.Steps[0].Path != "/flowd/bin/ebpf.test" || got.Modules[0] != plan.Modules[0] {
		t.Errorf("plan round trip: %+v", got)
	}
}
