//go:build !linux

package proxy

import (
	"net"

	"github.com/sluiceproxy/sluice/shaper"
)

// spliceSupported: elsewhere the pumps copy through a buffer.
const spliceSupported = false

func (p *pump) readable(fd uintptr) bool { panic("unreachable") }

// setPacingRate: kernel pacing is Linux-only.
func setPacingRate(c *net.TCPConn, rate uint64) error { return nil }

// The raw moves of rawio_linux.go: the splice path that calls them is
// Linux-only.
func (p *pump) readQueued(b []byte) (int, error)                   { panic("unreachable") }
func (p *pump) writeAll(b []byte) (int, error)                     { panic("unreachable") }
func (p *pump) spliceGrant(want int) (int64, error)                { panic("unreachable") }
func (p *pump) spliceIn(pp *pipe, n int, noWait bool) (int, error) { panic("unreachable") }
func (p *pump) spliceOut(pp *pipe, n int) (int, error)             { panic("unreachable") }
func (p *pump) rawIn(fd uintptr) bool                              { panic("unreachable") }
func (p *pump) rawOut(fd uintptr) bool                             { panic("unreachable") }

type pipe struct{}

// The shaping loop of loop_linux.go serves only the splice path.
func loopServed() int64                           { return 0 }
func (p *pump) loopable() bool                    { return false }
func (p *pump) runInLoop(queued int) (int, error) { panic("unreachable") }
func (p *pump) peekNow(fd uintptr) bool           { panic("unreachable") }

// takePipe: no pipes, so shaped moves read ahead by copying.
func takePipe() *pipe     { return nil }
func putPipe(*pipe, bool) {}

type shapeLoop struct{}

// newDrivenLink: without shaping loops a link runs its own timer.
func newDrivenLink(ll shaper.LinkLimit) (*shaper.Link, *shapeLoop) {
	return shaper.NewLink(ll, nil), nil
}
