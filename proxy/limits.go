package proxy

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/sluiceproxy/sluice/shaper"
)

// ConnLimits are per-connection limits, per direction.
type ConnLimits struct {
	// Up is client → upstream; Down is upstream → client.
	Up, Down shaper.Limit
	// KernelPacing also sets SO_MAX_PACING_RATE 0.5% above Down.Rate on the
	// client socket (Linux, up to 50 MB/s) and takes 10 ms grants instead
	// of 5 ms ones. On a path with a minimum RTT of a few milliseconds or
	// more the kernel then spaces each grant's packets at the rate; on
	// loopback and LANs a grant still leaves as one burst
	// (docs/shaping.md).
	KernelPacing bool
}

func (l ConnLimits) validate() error {
	if err := l.Up.Validate(); err != nil {
		return fmt.Errorf("up: %w", err)
	}
	if err := l.Down.Validate(); err != nil {
		return fmt.Errorf("down: %w", err)
	}
	return nil
}

// DefaultChunk is the grant size of shaped connections.
const DefaultChunk = 8192

// pacedGrant is how much rate a grant covers when the kernel paces the
// client socket. 10 ms gives 10 KB grants at 1 MB/s and 100 KB at 10 MB/s;
// 100 ms windows stay within 0.95–1.06 of the rate for a client on an
// Ethernet-MSS path (measured in docs/shaping.md). Whether the kernel also
// spreads a grant's packets depends on the path: on a path with a minimum
// RTT below a few milliseconds (loopback, a LAN) Linux sends a grant of up
// to 64 KB as one burst whatever the pacing rate; on a longer path it
// sends a few segments at a time at the rate (docs/shaping.md).
const pacedGrant = 10 * time.Millisecond

// pacedLongGrant is how much rate a paced grant covers when the kernel
// spreads it on the client's path (kernelSpreads): 50 KB at 1 MB/s, five
// times fewer grants, wake-ups and system calls than pacedGrant, while
// the client still receives a few segments at a time at the pacing rate,
// so 100 ms windows stay within a segment or two of the rate (measured on
// a veth pair between namespaces: docs/shaping.md).
const pacedLongGrant = 50 * time.Millisecond

// longGrantConns is how many paced connections a server has at most for
// a new one to take long grants. A grant above 16 KiB is moved by its
// direction's own goroutine, not by a shaping loop (loop_linux.go), and
// the loops batch the wake-ups of many connections: in a namespace where
// the kernel spreads grants, one connection at 1 MB/s cost 7–8 s/GB with
// 50 ms grants against 12–15 with 10 ms ones, but 50 at 1 MB/s each cost
// 1.25–1.33 against 1.05–1.2 (docs/shaping.md).
const longGrantConns = 4

// kernelBurst is the most bytes Linux sends at once on a TCP socket paced
// at rate bytes/s (tcp_tso_autosize): about 1 ms of the rate and, from
// Linux 5.18, 64 KB halved for every 2^log µs of the path's minimum RTT
// (log is net.ipv4.tcp_tso_rtt_log, default 9; -1 where the kernel has
// none). On loopback or a LAN (a minimum RTT under 512 µs) that is 64 KB
// more: a grant leaves as one burst. From about 4 ms of RTT on, or with
// log 0, it is the rate's 1 ms.
func kernelBurst(rate uint64, minRTT time.Duration, log int) uint64 {
	b := rate >> 10
	if log >= 0 {
		if r := uint64(minRTT.Microseconds()) >> uint(log); r < 32 {
			b += 65536 >> r
		}
	}
	return b
}

// kernelSpreads reports whether the kernel, pacing a client socket at
// paceRate, sends a grant of size bytes in at least four bursts, given the
// path's minimum RTT (0: not known, so not assumed).
func kernelSpreads(paceRate uint64, size int, minRTT time.Duration, log int) bool {
	return minRTT > 0 && 4*kernelBurst(paceRate, minRTT, log) <= uint64(size)
}

// pacedGrantSize is the grant of a down direction paced at rate bytes/s,
// before the chunk's floor and maxPacedGrant's cap (see docs/shaping.md):
//   - where the kernel spreads a grant on the client's path (minRTT, and
//     long: few enough paced connections), pacedLongGrant of the rate;
//   - else, up to what the shaping loops serve (aheadSize/4, 16 KiB: up to
//     1.6 MB/s), pacedGrant of the rate, 10 KB at 1 MB/s;
//   - else, as a grant arrives as one block, unpacedGrant of the rate, but
//     not under 16 KiB: 50 KB at 10 MB/s, so a 100 ms window holds twenty
//     grants and stays within ±5%.
func pacedGrantSize(rate int64, long bool, minRTT time.Duration) int {
	of := func(d time.Duration) int { return int(rate * int64(d) / int64(time.Second)) }
	switch {
	case long && kernelSpreads(pacingRateFor(rate), min(of(pacedLongGrant), maxPacedGrant), minRTT, tsoRTTLog()):
		return of(pacedLongGrant)
	case of(pacedGrant) <= aheadSize/4:
		return of(pacedGrant)
	}
	return max(of(unpacedGrant), aheadSize/4)
}

// unpacedGrant is how much rate a grant covers without kernel pacing: at
// least one chunk, so from 1.6 MB/s a grant is 5 ms of the rate (500 KB at
// 100 MB/s). A client receives each grant as one block, so a 100 ms window
// is within about one grant (±5%) of the rate. Against 1 ms grants it cut
// CPU at 100 MB/s by a third (docs/shaping.md); 8 ms grants cut more but
// put windows and the rate's error at the edge of their targets.
const unpacedGrant = 5 * time.Millisecond

// maxPacedRate is the highest down rate, in bytes per second, at which
// sluice asks the kernel to pace. At 100 MB/s the kernel's pacing stalled
// the socket for 40–60 ms in two 10-s runs of three (a 0.5× window, 0.7%
// short) on the benchmark machine, whatever the grant size; at 30 and
// 50 MB/s it never did. Above it, unpaced grants measured smooth
// (docs/shaping.md).
const maxPacedRate = 50_000_000

// pacingHeadroomPerMille is how far above the down rate SO_MAX_PACING_RATE
// is set, in thousandths: enough that the gate, not the kernel's rounding,
// is the limit on average, and small enough that at 1 MB/s the kernel
// cannot fit one burst more into a 100 ms window than the rate allows. A
// burst there is two 1,436-byte segments (2.9% of a window); 2% headroom
// let a window take one more, 1.038 of the rate, in every run on a veth
// pair, where 0.5% kept 4 of 6 runs within 0.981–1.014 (docs/shaping.md).
const pacingHeadroomPerMille = 5

// pacingRateFor is the SO_MAX_PACING_RATE sluice sets for a down rate.
func pacingRateFor(rate int64) uint64 {
	return uint64(rate) * (1000 + pacingHeadroomPerMille) / 1000
}

// maxPacedGrant caps a grant, in bytes: reached from 52 MB/s paced and
// from 105 MB/s unpaced. Paced grants of 768 KiB and 1 MiB at 100 MB/s cut
// CPU by a third but stalled the stream for 40–70 ms once in every 10 s
// run (a 0.6× window, 0.7% short); 512 KiB never did (measured in
// docs/shaping.md).
const maxPacedGrant = 512 << 10

// applyLimits sets the conn's gates (making them on first need), grant
// sizes and kernel pacing to lim. Connections of an unlimited listener
// carry no gate at all.
func (c *conn) applyLimits(lim *ConnLimits) {
	if lim != c.l.limits.Load() {
		cp := *lim // the listener's are never changed in place; others may be
		lim = &cp
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	c.limits = lim
	pace := lim.KernelPacing && !lim.Down.Unlimited() && lim.Down.Rate <= maxPacedRate && spliceSupported
	for d, l := range [2]shaper.Limit{Up: lim.Up, Down: lim.Down} {
		p := &c.pumps[d]
		chunk := c.cfg.Chunk
		switch {
		case pace && Dir(d) == Down:
			others := c.srv.pacedConns.Load()
			if c.paced {
				others--
			}
			size := pacedGrantSize(l.Rate, others < longGrantConns, c.clientMinRTT())
			chunk = max(chunk, min(size, maxPacedGrant))
			l.Burst = max(l.Burst, int64(chunk))
		case !l.Unlimited():
			chunk = max(chunk, min(int(l.Rate*int64(unpacedGrant)/int64(time.Second)), maxPacedGrant))
			l.Burst = max(l.Burst, int64(chunk))
		}
		p.chunk.Store(int64(chunk))
		if g := p.gate.Load(); g != nil {
			_ = g.SetLimit(l) // cannot fail: the Server validated l
		} else if !l.Unlimited() {
			p.gate.Store(shaper.NewGate(l, c.srv.clock))
		}
	}
	if pace || c.paced {
		rate := uint64(math.MaxUint64) // the kernel's "no limit"
		if pace {
			// A little above the gate's rate: the gate stays the exact
			// limit on average, the kernel only spaces packets
			// (pacingHeadroomPerMille).
			rate = pacingRateFor(lim.Down.Rate)
		}
		if err := c.setClientPacing(rate); err != nil {
			c.srv.log.Debug("set pacing rate", slog.Uint64(keyConnID, c.id), slog.Any(keyErr, err))
		}
		switch {
		case pace && !c.paced:
			c.srv.pacedConns.Add(1)
		case !pace && c.paced:
			c.srv.pacedConns.Add(-1)
		}
		c.paced = pace
	}
}

// waitingForTokens reports whether a pump is held back by the conn's own
// limit: such a conn has bytes to move and is not idle, however long a
// grant takes at a low rate.
func (c *conn) waitingForTokens() bool {
	for i := range c.pumps {
		if c.pumps[i].inLink.Load() {
			return true
		}
		if g := c.pumps[i].gate.Load(); g != nil && g.Stats().Waiting {
			return true
		}
	}
	return false
}
