// Package intercept owns the iptables rules that steer the app's DNS and
// virtual-IP connections to meshlet, in the network namespace meshlet shares
// with the app.
//
// Everything lives in one chain of our own, MESHLET_OUTPUT in the nat table,
// reached by a single jump at the top of nat OUTPUT; nothing else in the
// namespace is ever changed. meshlet's own sockets skip the chain by socket
// mark (see MarkedDialer) or by uid, so that its forwarded DNS queries and
// upstream connections are not captured again.
//
// The package also reads the original destination of a redirected connection
// (OriginalDst). It knows nothing about services: a VIP is only an address.
package intercept
