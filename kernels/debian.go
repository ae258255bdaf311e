package kernels

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// DebianKernel is a family of Debian kernel image packages, of which the
// newest the package index knows is tested.
type DebianKernel struct {
	Name string // in reports, e.g. "debian-6.1"
	// Package matches the package names (POSIX ERE and Go alike); its
	// first group is the ABI number that orders them, newest highest.
	Package string
}

// Kernel is an unpacked kernel package, ready to boot.
type Kernel struct {
	Name    string // the DebianKernel's
	Package string
	Version string
	Release string // uname -r
	Dir     string // where the package is unpacked
}

// Vmlinuz is the kernel image.
func (k *Kernel) Vmlinuz() string { return filepath.Join(k.Dir, "boot", "vmlinuz-"+k.Release) }

// Config is the kernel's build configuration.
func (k *Kernel) Config() string { return filepath.Join(k.Dir, "boot", "config-"+k.Release) }

// Module is the path of a module, given relative to the kernel/ directory
// of the modules ("net/ipv4/inet_diag.ko").
func (k *Kernel) Module(rel string) string {
	return filepath.Join(k.Dir, "lib", "modules", k.Release, "kernel", rel)
}

// Logf reports progress.
type Logf func(format string, args ...any)

// Fetch finds the newest package of the family, downloads it with apt-get
// into cache (once) and unpacks it there with dpkg -x. Nothing is installed
// on the host. When the package index cannot be read or updated, the newest
// kernel of the family already in the cache is used.
func (d DebianKernel) Fetch(ctx context.Context, cache string, logf Logf) (*Kernel, error) {
	re, err := regexp.Compile(d.Package)
	if err != nil {
		return nil, fmt.Errorf("package pattern of %s: %w", d.Name, err)
	}
	if err := prepareCache(cache); err != nil {
		return nil, err
	}
	pkg, err := d.newest(ctx, re, logf)
	if err != nil {
		if k, cerr := d.cached(cache, re); cerr == nil {
			logf("%s: %v; using %s %s from the cache", d.Name, err, k.Package, k.Version)
			return k, nil
		}
		return nil, err
	}
	version, err := aptVersion(ctx, pkg)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(cache, pkg+"_"+strings.ReplaceAll(version, ":", "%3a"))
	if _, err := os.Stat(filepath.Join(dir, "boot")); err == nil {
		logf("%s: %s %s (cached in %s)", d.Name, pkg, version, dir)
		return d.kernel(dir, pkg, version)
	}
	logf("%s: downloading %s %s", d.Name, pkg, version)
	if err := download(ctx, cache, pkg, dir); err != nil {
		return nil, err
	}
	return d.kernel(dir, pkg, version)
}

// prepareCache makes the cache directory, which git ignores by itself.
func prepareCache(cache string) error {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return fmt.Errorf("making kernel cache %s: %w", cache, err)
	}
	ignore := filepath.Join(cache, ".gitignore")
	if _, err := os.Stat(ignore); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(ignore, []byte("# downloaded kernels (make test-kernels)\n*\n"), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", ignore, err)
		}
	}
	return nil
}

// newest asks apt-cache for the family's packages, updating the package
// index once when it knows none.
func (d DebianKernel) newest(ctx context.Context, re *regexp.Regexp, logf Logf) (string, error) {
	out, err := command(ctx, "", "apt-cache", "search", "--names-only", d.Package)
	if err != nil {
		return "", err
	}
	names := NewestFirst(re, out)
	if len(names) == 0 {
		logf("%s: no package matches %s; running apt-get update", d.Name, d.Package)
		if _, err := command(ctx, "", "apt-get", "update", "-qq"); err != nil {
			return "", err
		}
		if out, err = command(ctx, "", "apt-cache", "search", "--names-only", d.Package); err != nil {
			return "", err
		}
		names = NewestFirst(re, out)
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no package in the apt index matches %s", d.Package)
	}
	return names[0], nil
}

// NewestFirst returns the package names of `apt-cache search` output that
// match re, ordered by the number re's first group captures, highest first.
func NewestFirst(re *regexp.Regexp, aptCacheSearch []byte) []string {
	type pkg struct {
		name string
		abi  int
	}
	var pkgs []pkg
	s := bufio.NewScanner(bytes.NewReader(aptCacheSearch))
	for s.Scan() {
		name, _, _ := strings.Cut(s.Text(), " ")
		m := re.FindStringSubmatch(name)
		if m == nil || len(m) < 2 {
			continue
		}
		abi, err := strconv.Atoi(m[1])
		if err != nil {
			continue
		}
		pkgs = append(pkgs, pkg{name, abi})
	}
	slices.SortStableFunc(pkgs, func(a, b pkg) int { return b.abi - a.abi })
	names := make([]string, len(pkgs))
	for i, p := range pkgs {
		names[i] = p.name
	}
	return slices.Compact(names)
}

func aptVersion(ctx context.Context, pkg string) (string, error) {
	out, err := command(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("apt-cache show %s: no Version", pkg)
}

// download fetches pkg's .deb and unpacks it into dir, atomically: dir
// exists only once the package is fully unpacked.
func download(ctx context.Context, cache, pkg, dir string) error {
	tmp, err := os.MkdirTemp(cache, ".download-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	// As root apt-get would drop to the _apt user, who cannot write here.
	if _, err := command(ctx, tmp, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", pkg); err != nil {
		return err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := command(ctx, "", "dpkg", "-x", debs[0], root); err != nil {
		return err
	}
	if err := os.Rename(root, dir); err != nil {
		return fmt.Errorf("moving the unpacked kernel to %s: %w", dir, err)
	}
	return nil
}

// cached returns the newest kernel of the family in the cache.
func (d DebianKernel) cached(cache string, re *regexp.Regexp) (*Kernel, error) {
	entries, err := os.ReadDir(cache)
	if err != nil {
		return nil, err
	}
	var listing []byte
	versions := map[string]string{}
	for _, e := range entries {
		pkg, version, ok := strings.Cut(e.Name(), "_")
		if !e.IsDir() || !ok {
			continue
		}
		if _, err := os.Stat(filepath.Join(cache, e.Name(), "boot")); err != nil {
			continue
		}
		listing = fmt.Appendf(listing, "%s - cached\n", pkg)
		versions[pkg] = version
	}
	names := NewestFirst(re, listing)
	if len(names) == 0 {
		return nil, fmt.Errorf("no %s kernel in %s", d.Name, cache)
	}
	v := versions[names[0]]
	return d.kernel(filepath.Join(cache, names[0]+"_"+v), names[0], strings.ReplaceAll(v, "%3a", ":"))
}

// kernel describes the package unpacked in dir.
func (d DebianKernel) kernel(dir, pkg, version string) (*Kernel, error) {
	releases, _ := filepath.Glob(filepath.Join(dir, "lib", "modules", "*"))
	if len(releases) != 1 {
		return nil, fmt.Errorf("%s: want one release under lib/modules, found %d", dir, len(releases))
	}
	k := &Kernel{Name: d.Name, Package: pkg, Version: version, Release: filepath.Base(releases[0]), Dir: dir}
	if _, err := os.Stat(k.Vmlinuz()); err != nil {
		return nil, fmt.Errorf("%s has no kernel image: %w", pkg, err)
	}
	return k, nil
}

// command runs a program and returns its standard output; its error says
// what failed with the program's standard error.
func command(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
