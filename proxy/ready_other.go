//go:build !linux

package proxy

import (
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// spliceSupported: elsewhere the pumps copy through a buffer.
const spliceSupported = false

func (m *moving) readable(fd uintptr) bool  { panic("unreachable") }
func (m *moving) readSmall(fd uintptr) bool { panic("unreachable") }
func (m *moving) peekNow(fd uintptr) bool   { panic("unreachable") }

func tsoRTTLog() int                        { return -1 }
func (c *conn) clientMinRTT() time.Duration { return 0 }

// setClientPacing: kernel pacing is Linux-only.
func (c *conn) setClientPacing(rate uint64) error { return nil }

// The raw moves of rawio_linux.go: the splice path that calls them is
// Linux-only.
func (p *pump) readQueued(b []byte) (int, error)                   { panic("unreachable") }
func (p *pump) writeAll(b []byte) (int, error)                     { panic("unreachable") }
func (p *pump) spliceGrant(want int) (int64, error)                { panic("unreachable") }
func (p *pump) spliceIn(pp *pipe, n int, noWait bool) (int, error) { panic("unreachable") }
func (p *pump) spliceOut(pp *pipe, n int) (int, error)             { panic("unreachable") }
func (m *moving) rawIn(fd uintptr) bool                            { panic("unreachable") }
func (m *moving) rawOut(fd uintptr) bool                           { panic("unreachable") }

type pipe struct{}

// The shaping loops of loop_linux.go serve only the splice path.
func newLoops(int, shaper.Clock) []*shaper.Loop   { return nil }
func (p *pump) loopable() bool                    { return false }
func (p *pump) runInLoop(queued int) (int, error) { panic("unreachable") }

type loopState struct{}

// takePipe: no pipes, so shaped moves read ahead by copying.
func takePipe() *pipe     { return nil }
func putPipe(*pipe, bool) {}
