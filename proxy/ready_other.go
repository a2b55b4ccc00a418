//go:build !linux

package proxy

import "net"

// spliceSupported: elsewhere the pumps copy through a buffer.
const spliceSupported = false

func (p *pump) readable(fd uintptr) bool { panic("unreachable") }

// setPacingRate: kernel pacing is Linux-only.
func setPacingRate(c *net.TCPConn, rate uint64) error { return nil }
