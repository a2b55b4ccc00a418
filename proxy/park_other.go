//go:build !linux

package proxy

import "net"

// watcher: parking idle directions is Linux-only (it watches sockets with
// an epoll set); elsewhere every pump keeps its goroutine.
type watcher struct{}

func newWatcher() (*watcher, error) { return nil, nil }

func (w *watcher) park(*pump) bool { panic("unreachable") }
func (w *watcher) wake(*pump)      { panic("unreachable") }
func (w *watcher) count() int      { return 0 }
func (w *watcher) close()          {}

func (w *watcher) detachedCount() int { return 0 }

func (c *conn) detach()       { panic("unreachable") }
func (c *conn) attach() error { panic("unreachable") }
func peerOf(int32) net.Addr   { return nil }
