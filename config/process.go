package config

import (
	"strconv"
	"strings"
	"time"
)

// Log configures the process logger.
type Log struct {
	// Level is one of "debug", "info", "warn", "error". Default "info".
	Level string
	// Format is "text" (logfmt-like) or "json". Default "text".
	Format string
}

// Cores says how many cores Go schedules sluice's goroutines on (its
// GOMAXPROCS): CoresAuto, CoresAll, or a fixed count from 1 to MaxCores.
// The GOMAXPROCS environment variable, when set, overrides it.
type Cores int

const (
	// CoresAuto (the default, "auto") runs on one core while sluice needs
	// less than about half of one, and on every core beyond that: one
	// core costs far less CPU per shaped byte, every core carries more.
	CoresAuto Cores = 0
	// CoresAll ("all") is Go's default: every core sluice may use.
	CoresAll Cores = -1
	// MaxCores bounds a fixed count.
	MaxCores = 1024
)

// String is the config form: "auto", "all" or the count.
func (c Cores) String() string {
	switch c {
	case CoresAuto:
		return "auto"
	case CoresAll:
		return "all"
	}
	return strconv.Itoa(int(c))
}

// Shutdown configures the graceful stop on SIGTERM/SIGINT.
type Shutdown struct {
	// Drain is how long live connections may run on after sluice stops
	// accepting; what is still open then is closed. Default 30s; 0 closes
	// at once.
	Drain time.Duration
}

// DefaultDrain is the default shutdown.drain.
const DefaultDrain = 30 * time.Second

// log reads {level, format}.
func (d *decoder) log(v any) Log {
	m := d.object("log", v, "level", "format")
	return Log{
		Level:  d.oneOf("log.level", m["level"], "info", "debug", "info", "warn", "error"),
		Format: d.oneOf("log.format", m["format"], "text", "text", "json"),
	}
}

// shutdown reads {drain}.
func (d *decoder) shutdown(v any) Shutdown {
	m := d.object("shutdown", v, "drain")
	return Shutdown{Drain: d.duration("shutdown.drain", m["drain"], DefaultDrain, false)}
}

// cores reads "auto", "all" or a count of cores.
func (d *decoder) cores(path string, v any) Cores {
	if v == nil {
		return CoresAuto
	}
	if s, ok := v.(string); ok {
		switch s = strings.ToLower(strings.TrimSpace(s)); s {
		case "auto":
			return CoresAuto
		case "all":
			return CoresAll
		}
		v = s
	}
	n, ok := wholeNumber(v)
	if !ok || n < 1 || n > MaxCores {
		d.failf(path, `want "auto", "all" or a whole number of cores from 1 to %d, got %s`, MaxCores, describe(v))
		return CoresAuto
	}
	return Cores(n)
}
