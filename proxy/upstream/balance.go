package upstream

import (
	"math"
	"time"
)

// tier is a pass of pick: which servers it considers.
type tier struct {
	backup bool // backups, else primaries
	tried  bool // servers the attempt tried already too
}

// tiers are pick's passes, in order: a primary not tried yet, a backup
// not tried yet, then a server tried already (primaries first).
var tiers = [...]tier{{false, false}, {true, false}, {false, true}, {true, true}}

// pick chooses a server for a at now, or nil if none can take a
// connection; see [Pool.DialFor]. It allocates nothing. Requires p.mu
// held.
func (p *Pool) pick(a *attempt, at time.Time) *server {
	now := p.since(at)
	if s := p.pickTiers(a, now); s != nil {
		return s
	}
	// Every server that could take it is stalled (see server.stalled):
	// better a wait than no server.
	a.stalled = true
	s := p.pickTiers(a, now)
	a.stalled = false
	if s != nil {
		return s
	}
	// No server is up. Probe the ejected one whose ejection ends first.
	var best *server
	for _, s := range p.servers {
		if s.drained || s.removed || s.down || s.cooling(at) || !at.Before(s.ejectedUntil) || a.has(s) {
			continue
		}
		if best == nil || s.ejectedUntil.Before(best.ejectedUntil) {
			best = s
		}
	}
	if best != nil {
		p.ejectedPicks++
	}
	return best
}

// pickTiers picks among the primaries, then the backups, then those a
// tried already; nil if none can take a.
func (p *Pool) pickTiers(a *attempt, now int64) *server {
	for _, t := range tiers {
		var s *server
		switch p.cfg.Balance {
		case LeastConn:
			s = p.leastConn(a, now, t)
		case SourceHash:
			if a.hashed {
				s = p.sourceHash(a, now, t)
			} else {
				s = p.roundRobin(a, now, t, nil)
			}
		default:
			s = p.roundRobin(a, now, t, nil)
		}
		if s != nil {
			return s
		}
	}
	return nil
}

// eligible reports whether s is in tier t for a at now.
func (a *attempt) eligible(s *server, now int64, t tier) bool {
	return s.backup == t.backup && s.ready(now) && (a.stalled || !s.stalled(now)) && (t.tried || !a.has(s))
}

// leastConn returns the eligible server with the fewest active
// connections per weight; among several, the next in smooth weighted
// round robin.
func (p *Pool) leastConn(a *attempt, now int64, t tier) *server {
	var best *server
	ties := 0
	for _, s := range p.servers {
		if !a.eligible(s, now, t) {
			continue
		}
		switch {
		case best == nil || s.active*best.weight < best.active*s.weight:
			best, ties = s, 1
		case s.active*best.weight == best.active*s.weight:
			ties++
		}
	}
	if ties <= 1 {
		return best
	}
	return p.roundRobin(a, now, t, best)
}

// roundRobin is nginx's smooth weighted round robin over the eligible
// servers (those as loaded as like, if like is set): each adds its weight
// to its current; the one with the most is chosen and loses the total.
func (p *Pool) roundRobin(a *attempt, now int64, t tier, like *server) *server {
	var best *server
	var total int64
	for _, s := range p.servers {
		if !a.eligible(s, now, t) || like != nil && s.active*like.weight != like.active*s.weight {
			continue
		}
		s.current += s.weight
		total += s.weight
		if best == nil || s.current > best.current {
			best = s
		}
	}
	if best != nil {
		best.current -= total
	}
	return best
}

// sourceHash is weighted rendezvous hashing: each eligible server scores
// the client's key, -ln(u) / weight for u its hash of the key in (0, 1),
// and the lowest score wins (the highest weight / -ln(u)). When a server
// leaves, only the clients it won move; the others' winners are
// unchanged. With equal weights the hash itself is the score.
func (p *Pool) sourceHash(a *attempt, now int64, t tier) *server {
	var best *server
	var bestH uint64
	var bestScore float64
	for _, s := range p.servers {
		if !a.eligible(s, now, t) {
			continue
		}
		h := mix(a.key ^ s.seed)
		if p.equalWeights {
			if best == nil || h > bestH {
				best, bestH = s, h
			}
			continue
		}
		u := (float64(h>>11) + 0.5) * (1.0 / (1 << 53)) // in (0, 1)
		score := -math.Log(u) * s.invWeight
		if best == nil || score < bestScore {
			best, bestScore = s, score
		}
	}
	return best
}
