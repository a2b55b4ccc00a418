package config

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Rate
		err  error
	}{
		{"bits", "800Kbit", 100_000, nil},
		{"megabits", "10Mbit", 1_250_000, nil},
		{"gigabits", "1Gbit", 125_000_000, nil},
		{"mbps alias", "10Mbps", 1_250_000, nil},
		{"per second suffix", "10Mbit/s", 1_250_000, nil},
		{"lower k", "8kbit", 1000, nil},
		{"fraction of bytes", "1.5MB/s", 1_500_000, nil},
		{"binary bytes", "64KiB/s", 65536, nil},
		{"MiB", "2MiB/s", 2 << 20, nil},
		{"space before unit", "10 Mbit", 1_250_000, nil},
		{"rounding", "12bit", 2, nil}, // 1.5 B/s rounds to 2
		{"unlimited", "unlimited", 0, nil},
		{"bare number is ambiguous", "1000", 0, ErrNoUnit},
		{"unknown unit", "10Mb", 0, ErrBadUnit},
		{"bytes without /s", "10MB", 0, ErrBadUnit},
		{"word", "fast", 0, ErrBadValue},
		{"negative", "-1Mbit", 0, ErrBadValue},
		{"zero", "0Mbit", 0, ErrBadValue},
		{"below a byte", "1bit", 0, ErrBadValue},
		{"too large", "99999999Tbit", 0, ErrBadValue},
		{"empty", "", 0, ErrBadValue},
		{"two dots", "1.2.3Mbit", 0, ErrBadValue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRate(tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("ParseRate(%q) error = %v, want %v", tc.in, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseRate(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Size
		err  error
	}{
		{"bare bytes", "8192", 8192, nil},
		{"B", "512B", 512, nil},
		{"KiB", "64KiB", 65536, nil},
		{"KB", "1KB", 1000, nil},
		{"MB fraction", "1.5MB", 1_500_000, nil},
		{"GiB", "1GiB", 1 << 30, nil},
		{"zero", "0", 0, nil},
		{"rate unit", "1MB/s", 0, ErrBadUnit},
		{"bits", "1Mbit", 0, ErrBadUnit},
		{"negative", "-5KiB", 0, ErrBadValue},
		{"word", "big", 0, ErrBadUnit},
		{"empty", "", 0, ErrBadValue},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("ParseSize(%q) error = %v, want %v", tc.in, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestRateString(t *testing.T) {
	for _, tc := range []struct {
		r    Rate
		want string
	}{
		{0, "unlimited"},
		{1_250_000, "10Mbit"},
		{65536, "64KiB/s"},
		{1 << 20, "1MiB/s"},
		{125, "1Kbit"},
		{2, "16bit"},
		{1_500_000, "12Mbit"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("Rate(%d).String() = %q, want %q", int64(tc.r), got, tc.want)
		}
	}
}

func TestSizeString(t *testing.T) {
	for _, tc := range []struct {
		s    Size
		want string
	}{
		{0, "0B"}, {8192, "8KiB"}, {1000, "1KB"}, {1 << 30, "1GiB"}, {1001, "1001B"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(tc.s), got, tc.want)
		}
	}
}

// FuzzParseRate checks ParseRate never panics, never returns a negative or
// out-of-range rate, and that String round-trips.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"10Mbit", "1.5MB/s", "64KiB/s", "unlimited", "800Kbit", "1000", "-1bit", "1e400Gbit", "NaNMbit", "0x10Mbit", " 3 Gbps "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", s)) {
				t.Errorf("ParseRate(%q) error %q does not quote the input", s, err)
			}
			return
		}
		if r < 0 || r > maxUnitValue {
			t.Fatalf("ParseRate(%q) = %d, out of range", s, r)
		}
		back, err := ParseRate(r.String())
		if err != nil || back != r {
			t.Fatalf("ParseRate(%q) = %d; its String %q parses to %d, %v", s, r, r.String(), back, err)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"8192", "64KiB", "1.5MB", "0", "-1", "1e30GiB", "KiB", "1 TiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			return
		}
		if v < 0 || v > maxUnitValue {
			t.Fatalf("ParseSize(%q) = %d, out of range", s, v)
		}
		back, err := ParseSize(v.String())
		if err != nil || back != v {
			t.Fatalf("ParseSize(%q) = %d; its String %q parses to %d, %v", s, v, v.String(), back, err)
		}
	})
}
