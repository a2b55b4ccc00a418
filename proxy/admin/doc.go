// Package admin is the admin HTTP API of a running sluice proxy: the
// handler, its JSON wire types, and the Prometheus collector that exports
// the proxy's counters at scrape time.
//
// It talks to the proxy only through the [Proxy] interface, which
// [*proxy.Server] implements; it never touches the proxy's internals or
// locks, and package proxy neither imports it nor net/http nor
// Prometheus. Like proxy, it takes plain values and never imports package
// config: the caller passes the unit parsers (Options.ParseRate and
// Options.ParseSize) and the reload function.
//
// The endpoints are documented in docs/operating.md. The URLs, the JSON
// and the metric names are a public interface: the types here are what
// the API reads and writes, and `sluice top` decodes them.
//
// Typical usage:
//
//	srv, err := proxy.New(proxy.Options{Listeners: listeners})
//	...
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(admin.NewCollector(srv))
//	h := admin.New(srv, admin.Options{
//		Token:    token,
//		Gatherer: reg,
//		Reload:   reload,
//	})
//	go http.Serve(ln, h)
//	...
//	h.SetToken(newToken) // on reload
package admin
