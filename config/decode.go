package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// decoder walks the generic settings tree, collecting every error. Its
// readers below each read one value at a path; a bad value records an error
// that names the path and the form wanted.
type decoder struct {
	errs []error
	base string // the config file's directory: relative paths in it are read from there; empty for the working directory
}

// path resolves a file path the config names: a relative one is taken
// from the config file's directory, as a reader of the file expects.
func (d *decoder) path(p string) string {
	if p == "" || filepath.IsAbs(p) || d.base == "" {
		return p
	}
	return filepath.Join(d.base, p)
}

func (d *decoder) failf(path, format string, args ...any) {
	d.errs = append(d.errs, fmt.Errorf("%s: "+format, append([]any{path}, args...)...))
}

func (d *decoder) rate(path string, v any) Rate {
	const form = `want a rate like "10Mbit" or "1.5MB/s"`
	switch x := v.(type) {
	case nil:
		return 0
	case string:
		r, err := ParseRate(x)
		if err != nil {
			d.failf(path, "%s, got %q: %s", form, x, unitReason(err))
			return 0
		}
		return r
	default:
		d.failf(path, "%s (with a unit: bits or bytes?), got %s", form, describe(v))
		return 0
	}
}

func (d *decoder) size(path string, v any, def, lo, hi Size) Size {
	const form = `want a size like "64KiB" or "8192"`
	var s Size
	switch x := v.(type) {
	case nil:
		return def
	case int:
		s = Size(x)
	case int64:
		s = Size(x)
	case string:
		var err error
		if s, err = ParseSize(x); err != nil {
			d.failf(path, "%s, got %q: %s", form, x, unitReason(err))
			return def
		}
	default:
		d.failf(path, "%s, got %s", form, describe(v))
		return def
	}
	if s < lo || s > hi {
		d.failf(path, "%s from %v to %v, got %v", form, lo, hi, s)
		return def
	}
	return s
}

func unitReason(err error) string {
	var ue *UnitError
	if errors.As(err, &ue) {
		return ue.Reason
	}
	return err.Error()
}

func (d *decoder) boolean(path string, v any, def bool) bool {
	switch x := v.(type) {
	case nil:
		return def
	case bool:
		return x
	case string:
		switch strings.ToLower(x) {
		case "true":
			return true
		case "false":
			return false
		}
	}
	d.failf(path, "want true or false, got %s", describe(v))
	return def
}

// asMap returns v as a map with string keys, if it is a mapping.
func asMap(v any) (map[string]any, bool) {
	switch m := v.(type) {
	case map[string]any:
		return m, true
	case map[any]any:
		out := make(map[string]any, len(m))
		for k, val := range m {
			out[fmt.Sprint(k)] = val
		}
		return out, true
	}
	return nil, false
}

// object returns v as a map with lower-cased keys, refusing keys not in
// allowed. A nil v is an empty object.
func (d *decoder) object(path string, v any, allowed ...string) map[string]any {
	if v == nil {
		return map[string]any{}
	}
	m, ok := asMap(v)
	if !ok {
		d.failf(orTop(path), "want a mapping of keys (%s), got %s", strings.Join(allowed, ", "), describe(v))
		return nil
	}
	out := make(map[string]any, len(m))
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		lk := strings.ToLower(k)
		if !slices.Contains(allowed, lk) {
			d.failf(join(path, k), "unknown key (known keys here: %s)", strings.Join(allowed, ", "))
			continue
		}
		out[lk] = m[k]
	}
	return out
}

func (d *decoder) str(path string, v any, def string) string {
	switch x := v.(type) {
	case nil:
		return def
	case string:
		return x
	default:
		d.failf(path, "want a string, got %s", describe(v))
		return def
	}
}

func (d *decoder) oneOf(path string, v any, def string, allowed ...string) string {
	s := strings.ToLower(d.str(path, v, def))
	if !slices.Contains(allowed, s) {
		d.failf(path, "want one of %s, got %q", strings.Join(allowed, ", "), s)
		return def
	}
	return s
}

// duration parses a Go duration ("5s", "1m30s"). Zero is allowed unless
// positive is set.
func (d *decoder) duration(path string, v any, def time.Duration, positive bool) time.Duration {
	const form = `want a duration like "5m" or "30s"`
	switch x := v.(type) {
	case nil:
		return def
	case string:
		dur, err := parseDuration(strings.TrimSpace(x))
		switch {
		case err != nil:
			d.failf(path, "%s, got %q", form, x)
		case dur < 0:
			d.failf(path, "%s, got a negative %q", form, x)
		case positive && dur == 0:
			d.failf(path, "%s greater than zero, got %q", form, x)
		default:
			return dur
		}
	case int, int64, float64:
		if fmt.Sprint(x) == "0" && !positive {
			return 0
		}
		d.failf(path, "%s (with a unit), got %v", form, x)
	default:
		d.failf(path, "%s, got %s", form, describe(v))
	}
	return def
}

// hostPort checks a "host:port" address. For a listen address the host may
// be empty and the port 0; an upstream needs both.
func (d *decoder) hostPort(path string, v any, listen bool) string {
	form := `want "host:port", like "10.0.0.1:80"`
	if listen {
		form = `want "host:port", like "0.0.0.0:8080" or "127.0.0.1:8080"`
	}
	s, ok := v.(string)
	if v == nil {
		d.failf(path, "required: %s", form)
		return ""
	}
	if !ok {
		d.failf(path, "%s, got %s", form, describe(v))
		return ""
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		d.failf(path, "%s, got %q", form, s)
		return ""
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || (!listen && p == 0) {
		d.failf(path, "%s with a port from 1 to 65535, got %q", form, s)
		return ""
	}
	if !listen && host == "" {
		d.failf(path, "%s with a host, got %q", form, s)
		return ""
	}
	return s
}

func describe(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x)
	case []any:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	default:
		return fmt.Sprintf("%v", x)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orTop(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

func orDefault(v any, def string) any {
	if v == nil {
		return def
	}
	return v
}

func (d *decoder) integer(path string, v any, def, lo, hi int) int {
	if v == nil {
		return def
	}
	n, ok := wholeNumber(v)
	switch {
	case !ok:
		d.failf(path, "want a whole number from %d to %d, got %s", lo, hi, describe(v))
		return def
	case n < lo || n > hi:
		d.failf(path, "want a whole number from %d to %d, got %d", lo, hi, n)
		return def
	}
	return n
}

// wholeNumber reads an integer, or a string holding one (from the
// environment); false for anything else.
func wholeNumber(v any) (int, bool) {
	switch x := v.(type) {
	case int:
		return x, true
	case int64:
		return int(x), true
	case string:
		n, err := strconv.Atoi(x)
		return n, err == nil
	}
	return 0, false
}

// number reads a decimal number from lo to hi.
func (d *decoder) number(path string, v any, def, lo, hi float64) float64 {
	var f float64
	switch x := v.(type) {
	case nil:
		return def
	case int:
		f = float64(x)
	case int64:
		f = float64(x)
	case float64:
		f = x
	case string:
		var err error
		if f, err = strconv.ParseFloat(x, 64); err != nil {
			d.failf(path, "want a number from %g to %g, got %s", lo, hi, describe(v))
			return def
		}
	default:
		d.failf(path, "want a number from %g to %g, got %s", lo, hi, describe(v))
		return def
	}
	if math.IsNaN(f) || f < lo || f > hi {
		d.failf(path, "want a number from %g to %g, got %g", lo, hi, f)
		return def
	}
	return f
}

// parseDuration is time.ParseDuration that also takes whole days first:
// "7d", "1d12h".
func parseDuration(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok || days == "" || strings.ContainsAny(days, ".+-") {
		return time.ParseDuration(s)
	}
	n, err := strconv.Atoi(days)
	if err != nil || n > 366*100 {
		return time.ParseDuration(s) // its error names s
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest == "" {
		return d, nil
	}
	r, err := time.ParseDuration(rest)
	if err != nil || r < 0 {
		return 0, fmt.Errorf("time: invalid duration %q", s)
	}
	return d + r, nil
}
