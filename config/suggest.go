package config

import (
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/agnivade/levenshtein"
)

// maxEdits is how far a mistyped name may be from the one meant for "did
// you mean" to name it: two edits catch a swapped, doubled or missing
// letter (ebpf.moed, FLOWD_EBPF_INTERVALL) without naming unrelated keys.
// A short name may be off by at most half its length.
const maxEdits = 2

// Near returns the names nearest to typed, ignoring case, at most two
// edits away: what a mistyped name probably meant. Ties are all returned,
// in the order of names.
func Near(typed string, names []string) []string {
	var near []string
	best := min(maxEdits, utf8.RuneCountInString(typed)/2)
	for _, n := range names {
		switch d := levenshtein.ComputeDistance(strings.ToLower(typed), strings.ToLower(n)); {
		case d > best:
		case d < best:
			best, near = d, []string{n}
		case d == best:
			near = append(near, n)
		}
	}
	return near
}

// DidYouMean formats names for an error: " (did you mean a or b?)", or ""
// for none.
func DidYouMean(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return " (did you mean " + strings.Join(names, " or ") + "?)"
}

// nearKeys returns the keys a mistyped key probably meant, of keys: those
// of the same name in another section (interval: ebpf.interval or
// netlink.interval), else the nearest (ebpf.moed: ebpf.mode) and those
// whose name ends with it (ports: filter.local_ports or
// filter.remote_ports). leaf is the name typed without its section, in
// lower case; name renders a key as it was typed (the key, or its
// environment variable).
func nearKeys(typed, leaf string, keys []string, name func(key string) string) []string {
	var same, ending, names []string
	for _, k := range keys {
		_, kleaf, ok := strings.Cut(k, ".")
		if !ok {
			kleaf = k
		}
		switch {
		case kleaf == leaf:
			same = append(same, name(k))
		case strings.HasSuffix(kleaf, "_"+leaf):
			ending = append(ending, name(k))
		}
		names = append(names, name(k))
	}
	if len(same) > 0 {
		return same
	}
	near := Near(typed, names)
	for _, n := range ending {
		if !slices.Contains(near, n) {
			near = append(near, n)
		}
	}
	return near
}

// sections returns the names of the sections of keys (ebpf, netlink...).
func sections() []string {
	var out []string
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		if name := keyName(t.Field(i)); name != "" && isSection(t.Field(i).Type) {
			out = append(out, name)
		}
	}
	return out
}
