// Package upstream forwards the app's outbound connections to healthy
// instances of the service they are meant for.
//
// It watches Consul (the catalog for which services exist, and the passing
// instances of every service in use), keeps each service's instances as an
// immutable [EndpointSet] that readers load without locking, picks an
// instance with a [Selector], and proxies: HTTP/1.x per request through one
// internal net/http server and httputil.ReverseProxy, anything else per
// connection as raw TCP.
//
// The package knows nothing of iptables or DNS: the agent hands [Mesh.ServeConn]
// connections it already accepted, together with the service they are for.
package upstream
