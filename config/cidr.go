package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// CIDRList is a list of networks (a listener's allow or deny), read from
// inline entries and from files ("file:PATH", one entry a line), each
// entry an address or a prefix. Files are read at load, so a reload reads
// them again. A relative PATH is read from the config file's directory.
type CIDRList struct {
	// Entries are the entries as configured (prefixes masked), files as
	// "file:PATH": what the effective config shows.
	Entries []string
	// Prefixes are every network, from the entries and the files, masked
	// (10.1.2.3/8 is 10.0.0.0/8); an address is its /32 or /128.
	Prefixes []netip.Prefix
}

// MaxCIDRFile bounds a CIDR list file, in bytes; MaxCIDRLine one line.
const (
	MaxCIDRFile = 64 << 20
	MaxCIDRLine = 1024
)

// ErrBadCIDRList is wrapped by the errors of [ParseCIDRList].
var ErrBadCIDRList = errors.New("config: bad CIDR list")

// ParseCIDRList reads a CIDR list: one address ("192.0.2.7", "2001:db8::1")
// or prefix ("192.0.2.0/24") a line; blank lines and anything after a '#'
// are ignored. Prefixes come back masked. An error wraps [ErrBadCIDRList]
// and names the line number and its text; a line longer than MaxCIDRLine
// or input beyond MaxCIDRFile is an error too.
func ParseCIDRList(r io.Reader) ([]netip.Prefix, error) {
	sc := bufio.NewScanner(io.LimitReader(r, MaxCIDRFile+1))
	sc.Buffer(make([]byte, 0, 256), MaxCIDRLine)
	var out []netip.Prefix
	var read int
	for line := 1; sc.Scan(); line++ {
		read += len(sc.Bytes()) + 1
		if read > MaxCIDRFile {
			return nil, fmt.Errorf("%w: more than %d bytes", ErrBadCIDRList, MaxCIDRFile)
		}
		text, _, _ := strings.Cut(sc.Text(), "#")
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		p, err := parseCIDR(text)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %q: %w", ErrBadCIDRList, line, text, err)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("%w: a line longer than %d bytes", ErrBadCIDRList, MaxCIDRLine)
		}
		return nil, fmt.Errorf("%w: %w", ErrBadCIDRList, err)
	}
	return out, nil
}

// parseCIDR reads an address or a prefix; an IPv4-mapped IPv6 one is its
// IPv4 form.
func parseCIDR(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, errors.New(`want an address or a prefix like "192.0.2.0/24"`)
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, errors.New(`want an address or a prefix like "192.0.2.0/24"`)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// cidrList reads a list of entries: addresses, prefixes and "file:PATH".
func (d *decoder) cidrList(path string, v any) CIDRList {
	var l CIDRList
	if v == nil {
		return l
	}
	list, ok := v.([]any)
	if !ok {
		d.failf(path, `want a list of addresses, prefixes or "file:PATH", like ["10.0.0.0/8", "file:/etc/sluice/deny.txt"], got %s`, describe(v))
		return l
	}
	for i, item := range list {
		p := path + "[" + strconv.Itoa(i) + "]"
		s, ok := item.(string)
		if !ok {
			d.failf(p, `want an address, a prefix or "file:PATH", got %s`, describe(item))
			continue
		}
		s = strings.TrimSpace(s)
		if file, ok := strings.CutPrefix(s, "file:"); ok {
			file = d.path(file)
			f, err := os.Open(file)
			if err != nil {
				d.failf(p, "read %q: %v", file, err)
				continue
			}
			ps, err := ParseCIDRList(f)
			f.Close()
			if err != nil {
				d.failf(p, "%q: %v", file, err)
				continue
			}
			l.Prefixes = append(l.Prefixes, ps...)
			l.Entries = append(l.Entries, "file:"+file)
			continue
		}
		pr, err := parseCIDR(s)
		if err != nil {
			d.failf(p, "%v, got %q", err, s)
			continue
		}
		l.Prefixes = append(l.Prefixes, pr)
		l.Entries = append(l.Entries, pr.String())
	}
	return l
}
