package flows

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/flowd/flowd/cgroup"
	"github.com/flowd/flowd/flow"
)

// Selection chooses records: those of the flows that match every kind of
// criterion given (any of the values of one kind), at times within the
// window. The zero Selection, and a nil one, select everything.
type Selection struct {
	Cookies  []uint64
	Ports    []uint16       // either end's port
	Prefixes []netip.Prefix // either end's address (an address is a /32 or /128)
	Cgroups  []CgroupMatch
	// Since and Until bound the records' times (both included).
	Since, Until TimeBound
}

// CgroupMatch selects the flows of one cgroup and of the cgroups below it.
type CgroupMatch struct {
	// Path is relative to the cgroup2 mount, without leading or trailing
	// slash ("system.slice/nginx.service"); empty when an id was given.
	Path string
	// IDs are the cgroup ids that match: the one given, or those of Path's
	// subtree on this host when it exists here.
	IDs map[uint64]bool
}

// TimeBound is an absolute time, or an offset from the first record read.
type TimeBound struct {
	At     time.Time
	Offset time.Duration
	Set    bool
	rel    bool
}

func (b TimeBound) String() string {
	switch {
	case !b.Set:
		return ""
	case b.rel:
		return b.Offset.String()
	}
	return b.At.Format(time.RFC3339Nano)
}

// resolve fixes a relative bound at the time of the first record.
func (b *TimeBound) resolve(first time.Time) {
	if b.Set && b.rel {
		b.At, b.rel = first.Add(b.Offset), false
	}
}

// ParseTimeBound reads an RFC 3339 time (2026-01-02T15:04:05Z) or a
// duration after the first record of the input (90s, 5m).
func ParseTimeBound(s string) (TimeBound, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return TimeBound{}, fmt.Errorf("%q: a duration after the first record must not be negative", s)
		}
		return TimeBound{Offset: d, Set: true, rel: true}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return TimeBound{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-01-02T15:04:05Z) nor a duration (90s)", s)
	}
	return TimeBound{At: t, Set: true}, nil
}

// ParseCgroup reads a cgroup id (all digits) or a cgroup path, absolute on
// this host's cgroup2 mount or relative to it. A path that exists here
// also matches the ids of its subtree, for records that carry only
// cgroup_id; one that does not exist matches by path only.
func ParseCgroup(s string) (CgroupMatch, error) {
	if s == "" {
		return CgroupMatch{}, errors.New("empty cgroup")
	}
	if id, err := strconv.ParseUint(s, 10, 64); err == nil {
		return CgroupMatch{IDs: map[uint64]bool{id: true}}, nil
	}
	mount, err := cgroup.Mount()
	if err != nil && filepath.IsAbs(s) {
		return CgroupMatch{}, fmt.Errorf("cgroup %s: %w", s, err)
	}
	rel := s
	if filepath.IsAbs(s) {
		r, err := filepath.Rel(mount, filepath.Clean(s))
		if err != nil || r == ".." || strings.HasPrefix(r, "../") {
			return CgroupMatch{}, fmt.Errorf("cgroup %s is not below the cgroup2 mount %s", s, mount)
		}
		rel = r
	}
	m := CgroupMatch{Path: cleanCgroupPath(rel)}
	if mount != "" {
		if ids, err := cgroup.Subtree(filepath.Join(mount, m.Path)); err == nil {
			m.IDs = make(map[uint64]bool, len(ids))
			for id := range ids {
				m.IDs[id] = true
			}
		}
	}
	return m, nil
}

func cleanCgroupPath(p string) string {
	p = filepath.Clean("/" + p)
	return strings.Trim(p, "/")
}

// matches reports whether a flow in cgroup id, with path p ("" when its
// records do not carry one), is in m's subtree.
func (m *CgroupMatch) matches(id uint64, p string) bool {
	if m.IDs[id] {
		return true
	}
	if m.Path == "" || p == "" {
		return false
	}
	p = cleanCgroupPath(p)
	return p == m.Path || strings.HasPrefix(p, m.Path+"/")
}

// Match reports whether s selects r. A relative time bound is fixed at the
// first record Match sees.
func (s *Selection) Match(r *flow.Record) bool {
	if s == nil {
		return true
	}
	s.Since.resolve(r.Time)
	s.Until.resolve(r.Time)
	if s.Since.Set && r.Time.Before(s.Since.At) || s.Until.Set && r.Time.After(s.Until.At) {
		return false
	}
	if len(s.Cookies) > 0 && !slices.Contains(s.Cookies, r.Cookie) {
		return false
	}
	if len(s.Ports) > 0 && !slices.Contains(s.Ports, r.LocalPort) && !slices.Contains(s.Ports, r.RemotePort) {
		return false
	}
	if len(s.Prefixes) > 0 && !slices.ContainsFunc(s.Prefixes, func(p netip.Prefix) bool {
		return p.Contains(r.LocalAddr.Unmap()) || p.Contains(r.RemoteAddr.Unmap())
	}) {
		return false
	}
	if len(s.Cgroups) > 0 {
		if !slices.ContainsFunc(s.Cgroups, func(m CgroupMatch) bool { return m.matches(r.CgroupID, r.Cgroup) }) {
			return false
		}
	}
	return true
}

// ByPathOnly returns the cgroup paths given that match by path only (they
// do not exist on this host), for a warning: records that carry no cgroup
// path cannot match them.
func (s *Selection) ByPathOnly() []string {
	var out []string
	for _, m := range s.Cgroups {
		if m.Path != "" && len(m.IDs) == 0 {
			out = append(out, m.Path)
		}
	}
	return out
}

// AddFlags registers the selection's flags on fs: --cookie, --port, --addr,
// --cgroup (each repeatable, or comma-separated), --since and --until.
func (s *Selection) AddFlags(fs *pflag.FlagSet) {
	fs.Var(&listValue[uint64]{list: &s.Cookies, typ: "cookie", parse: func(v string) (uint64, error) {
		return strconv.ParseUint(v, 10, 64)
	}}, "cookie", "select the flow with this socket cookie")
	fs.Var(&listValue[uint16]{list: &s.Ports, typ: "port", parse: func(v string) (uint16, error) {
		p, err := strconv.ParseUint(v, 10, 16)
		return uint16(p), err
	}}, "port", "select flows with this port at either end")
	fs.Var(&listValue[netip.Prefix]{list: &s.Prefixes, typ: "addr", parse: parsePrefix}, "addr",
		"select flows with this address, or an address in this prefix (10.0.0.0/8), at either end")
	fs.Var(&listValue[CgroupMatch]{list: &s.Cgroups, typ: "cgroup", parse: ParseCgroup}, "cgroup",
		"select flows of this cgroup or below it: an id (cgroup_id) or a path, relative to the cgroup2 mount or absolute")
	fs.Var(&timeValue{&s.Since}, "since", "select records at or after this time: RFC 3339, or a duration after the first record (30s)")
	fs.Var(&timeValue{&s.Until}, "until", "select records at or before this time: RFC 3339, or a duration after the first record (90s)")
}

func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return p, err
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(0, p.Bits()-96))
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// listValue is a repeatable flag whose values may also be comma-separated.
type listValue[T any] struct {
	list  *[]T
	typ   string
	parse func(string) (T, error)
	texts []string
}

func (v *listValue[T]) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		x, err := v.parse(part)
		if err != nil {
			return err
		}
		*v.list = append(*v.list, x)
		v.texts = append(v.texts, part)
	}
	return nil
}

func (v *listValue[T]) String() string { return strings.Join(v.texts, ",") }
func (v *listValue[T]) Type() string   { return v.typ }

type timeValue struct{ b *TimeBound }

func (v *timeValue) Set(s string) error {
	b, err := ParseTimeBound(s)
	if err != nil {
		return err
	}
	*v.b = b
	return nil
}

func (v *timeValue) String() string {
	if v.b == nil {
		return ""
	}
	return v.b.String()
}
func (v *timeValue) Type() string { return "time" }
