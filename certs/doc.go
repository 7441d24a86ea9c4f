// Package certs holds meshlet's TLS material from Consul Connect: the CA
// roots and the leaf certificate of the app's service, watched through the
// local Consul agent with blocking queries, and the server and client
// tls.Configs built on them.
//
// Roots and leaf live in one immutable value that is swapped atomically
// (atomic.Pointer), and every tls.Config reads the current one at each
// handshake (GetCertificate, GetClientCertificate, VerifyConnection), so a
// renewed leaf or a CA rotation takes effect on the next handshake without
// a restart and without touching open connections. Every root Consul lists
// is trusted: during a rotation there are two, and a peer whose leaf is
// still signed by the old one must keep working. Keys stay in memory; none
// is written to disk.
//
// Peers are checked in VerifyConnection, not VerifyPeerCertificate, because
// Go skips the latter on resumed sessions: a resumed session is checked
// again against the roots and the clock of now, and its identity authorized
// again. Identities are Consul's SPIFFE URIs,
// spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<name> (see [ID]).
//
// When Consul cannot be reached, the last roots and leaf keep serving until
// the leaf expires; the watches retry with backoff, and [Manager.Snapshot]
// and the log say when the leaf nears its expiry without renewal.
//
// certs dials and accepts nothing itself; it consumes the two calls of
// consul/api's Agent it needs through the small [Consul] interface.
package certs
