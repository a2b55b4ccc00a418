//go:build !linux

package proxy

// spliceSupported: elsewhere the pumps copy through a buffer.
const spliceSupported = false

func (p *pump) readable(fd uintptr) bool { panic("unreachable") }
