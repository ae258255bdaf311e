package kernels

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

const debian61 = `^linux-image-6\.1\.0-([0-9]+)-cloud-amd64-unsigned$`

func TestNewestFirst(t *testing.T) {
	out := []byte(`linux-image-6.1.0-9-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-55-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-55-cloud-amd64-unsigned-dbg - Debug symbols
linux-image-6.10.0-1-cloud-amd64-unsigned - not 6.1
linux-image-6.1.0-56-cloud-amd64-unsigned - listed twice
`)
	got := NewestFirst(regexp.MustCompile(debian61), out)
	want := []string{
		"linux-image-6.1.0-56-cloud-amd64-unsigned",
		"linux-image-6.1.0-55-cloud-amd64-unsigned",
		"linux-image-6.1.0-9-cloud-amd64-unsigned",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := NewestFirst(regexp.MustCompile(debian61), nil); len(got) != 0 {
		t.Errorf("empty listing: %q", got)
	}
}

// fakeKernel lays out what dpkg -x leaves of a kernel package.
func fakeKernel(t *testing.T, dir, release string) {
	t.Helper()
	for _, p := range []string{"boot/vmlinuz-" + release, "lib/modules/" + release + "/kernel/net/ipv4/tcp_diag.ko"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCached(t *testing.T) {
	cache := t.TempDir()
	d := DebianKernel{Name: "debian-6.1", Package: debian61}
	re := regexp.MustCompile(debian61)
	if _, err := d.cached(cache, re); err == nil {
		t.Fatal("an empty cache gave a kernel")
	}
	fakeKernel(t, filepath.Join(cache, "linux-image-6.1.0-9-cloud-amd64-unsigned_6.1.27-1"), "6.1.0-9-cloud-amd64")
	fakeKernel(t, filepath.Join(cache, "linux-image-6.1.0-56-cloud-amd64-unsigned_1%3a6.1.192-2"), "6.1.0-56-cloud-amd64")
	// An unfinished download is not a kernel.
	if err := os.MkdirAll(filepath.Join(cache, ".download-1", "root"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := prepareCache(cache); err != nil {
		t.Fatal(err)
	}
	k, err := d.cached(cache, re)
	if err != nil {
		t.Fatal(err)
	}
	if k.Package != "linux-image-6.1.0-56-cloud-amd64-unsigned" || k.Version != "1:6.1.192-2" || k.Release != "6.1.0-56-cloud-amd64" {
		t.Errorf("got %+v", k)
	}
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(k.Module("net/ipv4/tcp_diag.ko")); err != nil {
		t.Error(err)
	}
	if b, err := os.ReadFile(filepath.Join(cache, ".gitignore")); err != nil || string(b[len(b)-2:]) != "*\n" {
		t.Errorf("cache .gitignore: %q, %v", b, err)
	}
}
