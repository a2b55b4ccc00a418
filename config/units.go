package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Rate is a data rate in bytes per second. The zero Rate means "no limit".
//
// In text a rate is a decimal number followed by a unit, either in bits per
// second (decimal prefixes: bit, Kbit, Mbit, Gbit, Tbit, or the same with
// "bps" or "/s": Kbps, Mbit/s) or in bytes per second (B/s, KB/s, MB/s, GB/s
// with decimal prefixes, KiB/s, MiB/s, GiB/s with binary ones). A bare
// number is refused because it is ambiguous between bits and bytes. The word
// "unlimited" is the zero Rate. Parsed values are rounded to the nearest
// byte per second; a positive value that rounds to zero is refused.
type Rate int64

// Size is an amount of data in bytes.
//
// In text a size is a whole number of bytes ("8192") or a decimal number
// followed by a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB,
// TiB (powers of 1024). Parsed values are rounded to the nearest byte.
type Size int64

// Sentinel errors of the unit parsers, for callers that branch on them.
var (
	ErrNoUnit   = errors.New("config: missing unit")
	ErrBadUnit  = errors.New("config: unknown unit")
	ErrBadValue = errors.New("config: bad number")
)

// UnitError is the error of [ParseRate] and [ParseSize]. It unwraps to one
// of the sentinels [ErrNoUnit], [ErrBadUnit], [ErrBadValue].
type UnitError struct {
	Input  string // the text given
	Reason string // what is wrong with it, e.g. "is negative"
	Kind   error  // the sentinel
}

func (e *UnitError) Error() string {
	return fmt.Sprintf("%v: %q %s", e.Kind, e.Input, e.Reason)
}

func (e *UnitError) Unwrap() error { return e.Kind }

func unitErr(kind error, input, reason string, args ...any) error {
	return &UnitError{Input: input, Reason: fmt.Sprintf(reason, args...), Kind: kind}
}

// maxUnitValue bounds parsed values well below the int64 range so that later
// arithmetic (bits, sums of budgets) cannot overflow: 2^53 bytes is 8 PiB.
const maxUnitValue = 1 << 53

var rateUnits = map[string]float64{
	"bit": 1.0 / 8, "bps": 1.0 / 8, "bit/s": 1.0 / 8,
	"kbit": 1e3 / 8, "Kbit": 1e3 / 8, "kbps": 1e3 / 8, "Kbps": 1e3 / 8, "kbit/s": 1e3 / 8, "Kbit/s": 1e3 / 8,
	"Mbit": 1e6 / 8, "Mbps": 1e6 / 8, "Mbit/s": 1e6 / 8,
	"Gbit": 1e9 / 8, "Gbps": 1e9 / 8, "Gbit/s": 1e9 / 8,
	"Tbit": 1e12 / 8, "Tbps": 1e12 / 8, "Tbit/s": 1e12 / 8,
	"B/s": 1, "kB/s": 1e3, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12,
	"KiB/s": 1 << 10, "MiB/s": 1 << 20, "GiB/s": 1 << 30, "TiB/s": 1 << 40,
}

var sizeUnits = map[string]float64{
	"": 1, "B": 1,
	"kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
}

// ParseRate parses a rate such as "10Mbit", "1.5MB/s" or "64KiB/s".
// It returns an error wrapping [ErrNoUnit], [ErrBadUnit] or [ErrBadValue]
// when s is not of that form, is negative, or is out of range.
func ParseRate(s string) (Rate, error) {
	t := strings.TrimSpace(s)
	if t == "unlimited" {
		return 0, nil
	}
	num, unit := splitNumber(t)
	if num == "" {
		return 0, unitErr(ErrBadValue, s, "has no number")
	}
	if unit == "" {
		return 0, unitErr(ErrNoUnit, s, "has no unit (bits or bytes?)")
	}
	mul, ok := rateUnits[unit]
	if !ok {
		return 0, unitErr(ErrBadUnit, s, "has unknown unit %q", unit)
	}
	v, err := parseValue(num, mul, s)
	if err != nil {
		return 0, err
	}
	if v == 0 {
		// A zero rate would read as "no limit" although it looks like "block
		// everything": make the operator say "unlimited" instead.
		return 0, unitErr(ErrBadValue, s, "is below 1 byte per second (write \"unlimited\" for no limit)")
	}
	return Rate(v), nil
}

// ParseSize parses a size such as "8192", "64KiB" or "1.5MB".
// It returns an error wrapping [ErrBadUnit] or [ErrBadValue] when s is not of
// that form, is negative, or is out of range.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	num, unit := splitNumber(t)
	mul, ok := sizeUnits[unit]
	if !ok {
		return 0, unitErr(ErrBadUnit, s, "has unknown unit %q", unit)
	}
	v, err := parseValue(num, mul, s)
	if err != nil {
		return 0, err
	}
	return Size(v), nil
}

// splitNumber splits "1.5MB/s" into "1.5" and "MB/s", allowing spaces
// between the two.
func splitNumber(s string) (num, unit string) {
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.' || s[i] == '-' || s[i] == '+') {
		i++
	}
	return s[:i], strings.TrimSpace(s[i:])
}

func parseValue(num string, mul float64, orig string) (int64, error) {
	if num == "" {
		return 0, unitErr(ErrBadValue, orig, "has no number")
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, unitErr(ErrBadValue, orig, "is not a number")
	}
	if f < 0 {
		return 0, unitErr(ErrBadValue, orig, "is negative")
	}
	v := math.Round(f * mul)
	if v > maxUnitValue {
		return 0, unitErr(ErrBadValue, orig, "is too large")
	}
	return int64(v), nil
}

// String formats r so that [ParseRate] gives r back: in binary bytes per
// second when r is a whole number of KiB/s, MiB/s or GiB/s, else in whole
// bits per second with the largest decimal prefix that divides evenly.
func (r Rate) String() string {
	if r == 0 {
		return "unlimited"
	}
	for _, u := range []struct {
		name string
		div  int64
	}{{"GiB/s", 1 << 30}, {"MiB/s", 1 << 20}, {"KiB/s", 1 << 10}} {
		if int64(r)%u.div == 0 {
			return strconv.FormatInt(int64(r)/u.div, 10) + u.name
		}
	}
	bits := int64(r) * 8
	for _, u := range []struct {
		name string
		div  int64
	}{{"Gbit", 1e9}, {"Mbit", 1e6}, {"Kbit", 1e3}} {
		if bits%u.div == 0 {
			return strconv.FormatInt(bits/u.div, 10) + u.name
		}
	}
	return strconv.FormatInt(bits, 10) + "bit"
}

// String formats s so that [ParseSize] gives s back, with the largest unit
// that divides it evenly (binary units first).
func (s Size) String() string {
	for _, u := range []struct {
		name string
		div  int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}} {
		if s != 0 && int64(s)%u.div == 0 {
			return strconv.FormatInt(int64(s)/u.div, 10) + u.name
		}
	}
	return strconv.FormatInt(int64(s), 10) + "B"
}
