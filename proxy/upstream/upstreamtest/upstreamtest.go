// Package upstreamtest has servers for tests of upstream pools: a
// blackholed address, to which dials hang as to a host that is gone.
package upstreamtest
