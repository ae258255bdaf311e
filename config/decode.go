package config

import (
	"encoding"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/flowd/flowd/otlp/otlpconfig"
)

// decode is Load's decode hook: it converts a value viper holds (from YAML,
// a string from the environment or a flag, or a default) to the type of its
// field, or says why it cannot, quoting the value. mapstructure then only
// copies.
func decode(from, to reflect.Value) (any, error) {
	v, t := from.Interface(), to.Type()
	text, scalar := scalarText(v)
	switch {
	case t.Kind() == reflect.Map && from.Kind() == reflect.String:
		return toMap(text)
	case t.Kind() == reflect.Map && from.Kind() != reflect.Map:
		return nil, fmt.Errorf("%s is not a mapping (e.g. {name: value})", formatValue(v))
	case from.Type() == t || t.Kind() == reflect.Map:
		return v, nil
	case t.Kind() == reflect.Slice:
		return toList(v, t)
	case isSection(t):
		if reflect.ValueOf(v).Kind() != reflect.Map {
			return nil, fmt.Errorf("%s is not a mapping of keys", formatValue(v))
		}
		return v, nil
	case !scalar && t.Kind() == reflect.String:
		return nil, fmt.Errorf("%s is not a string", formatValue(v))
	case !scalar:
		return nil, fmt.Errorf("%s is not a single value", formatValue(v))
	case t == reflect.TypeFor[time.Duration]():
		return toDuration(v)
	case t == reflect.TypeFor[netip.Prefix]():
		p, err := netip.ParsePrefix(text)
		if err != nil {
			return nil, fmt.Errorf("%s is not a CIDR prefix (e.g. 10.0.0.0/8, 2001:db8::/32)", formatValue(v))
		}
		return p.Masked(), nil
	case reflect.PointerTo(t).Implements(textUnmarshaler):
		p := reflect.New(t)
		if err := p.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(text)); err != nil {
			return nil, err
		}
		return p.Elem().Interface(), nil
	case t.Kind() == reflect.Int:
		return toInt(v)
	case t.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(text)
		if err != nil {
			return nil, fmt.Errorf("%s is not true or false", formatValue(v))
		}
		return b, nil
	case t.Kind() == reflect.String:
		return text, nil
	}
	return v, nil
}

// toList returns v as a list. A string (from the environment, or one value
// in the file) is split at commas and white space; another single value is
// a list of one.
func toList(v any, t reflect.Type) (any, error) {
	switch v := v.(type) {
	case string:
		return strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }), nil
	case []any:
		for _, e := range v {
			if k := reflect.ValueOf(e).Kind(); !isSection(t.Elem()) && (e == nil || k == reflect.Slice || k == reflect.Map) {
				return nil, fmt.Errorf("%s is not a list of values", formatValue(v))
			}
		}
		return v, nil
	case map[string]any:
		return nil, fmt.Errorf("%s is not a list", formatValue(v))
	}
	return []any{v}, nil
}

// toMap reads a mapping from one string (an environment variable) written
// as OTEL_EXPORTER_OTLP_HEADERS is: "name=value,name2=value2", with
// %-escapes in the values. The names are lower-cased, as viper does those
// of the file.
func toMap(s string) (map[string]string, error) {
	parsed, err := otlpconfig.ParseHeaders(s)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(parsed))
	for _, name := range slices.Sorted(maps.Keys(parsed)) {
		lower := strings.ToLower(name)
		if _, ok := m[lower]; ok {
			return nil, fmt.Errorf("%q is given twice (names are not case-sensitive)", lower)
		}
		m[lower] = parsed[name]
	}
	return m, nil
}

// toDuration reads a Go duration. A bare 0 is one too; other bare numbers
// are not, since their unit would be a guess.
func toDuration(v any) (time.Duration, error) {
	switch v := v.(type) {
	case string:
		if d, err := time.ParseDuration(v); err == nil {
			return d, nil
		}
	case int:
		if v != 0 {
			return 0, fmt.Errorf("%d is not a duration (use a unit, e.g. \"%ds\")", v, v)
		}
		return 0, nil
	}
	return 0, fmt.Errorf("%s is not a duration (use a unit, e.g. 500ms, 2s)", formatValue(v))
}

// toInt reads an integer; a string (from the environment) must hold one in
// decimal.
func toInt(v any) (int, error) {
	switch x := v.(type) {
	case int:
		return x, nil
	case uint64: // YAML's numbers past math.MaxInt64
		return 0, fmt.Errorf("%d is too large", x)
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int(x), nil
		}
	case string:
		if n, err := strconv.Atoi(strings.TrimSpace(x)); err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s is not an integer", formatValue(v))
}

// scalarText returns a single value from YAML or the environment as text.
func scalarText(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case int, uint64, float64, bool:
		return fmt.Sprint(v), true
	}
	return "", false
}

// formatValue renders a value from YAML or the environment for an error.
func formatValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(v)
	case []any:
		parts := make([]string, len(v))
		for i := range v {
			parts[i] = formatValue(v[i])
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(v)) {
			parts = append(parts, k+": "+formatValue(v[k]))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	}
	return fmt.Sprint(v)
}
