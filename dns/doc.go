// Package dns is the DNS server the application's queries are redirected to.
//
// Names under a mesh suffix (NAME.local., NAME.service.consul.) are answered
// here with the virtual IP of service NAME, asked from a [Services]
// implementation. Every other name is forwarded unchanged to the resolvers the
// application had before (see [ReadResolvConf]), over the transport the query
// came in on, and the first reply is written back byte for byte.
//
// Choices made where the DNS leaves room, so that callers can rely on them:
//
//   - NAME.SUFFIX. with one label before the suffix is service NAME (matched
//     case-insensitively, answered with the owner name exactly as asked).
//     A names VIP; any other type of an existing service is NOERROR with no
//     data. A service that does not exist is NXDOMAIN for every type.
//   - TAG.NAME.SUFFIX. is the subset of NAME's instances that carry TAG,
//     asked of [Services] as "tag.name" and answered as a service. Names
//     with more labels are NXDOMAIN, and so is a label that cannot be a
//     service name or tag (anything but letters, digits, '-' and '_',
//     e.g. escaped bytes).
//   - SRV of NAME.SUFFIX. (or TAG.NAME.SUFFIX.), and of the RFC 2782 names
//     _NAME._tcp.SUFFIX. (_udp too) and _NAME._TAG.SUFFIX. as Consul's DNS
//     has them, answers one record per distinct port of the instances,
//     priority and weight 1, target NAME.SUFFIX. (lower-case), with the
//     VIP in the additional section; over UDP it is cut to the client's
//     size with TC set. The RFC 2782 names have no other data.
//   - PTR of a VIP's reverse name (D.C.B.A.in-addr.arpa.) answers its
//     name under the first configured suffix; every other reverse name,
//     and every other type, is forwarded.
//   - The bare suffix (local.) exists: an SOA question gets the synthetic SOA
//     as answer, every other type gets NOERROR with no data.
//   - Negative answers (NXDOMAIN, no data) carry a synthetic SOA of the
//     suffix zone in the authority section whose minimum is the mesh TTL, so
//     resolvers cache them only briefly.
//   - A mesh name asked in a class other than IN is REFUSED: the zone exists
//     for IN only, and REFUSED tells a resolver not to retry it here.
//   - Opcodes other than QUERY are NOTIMP and are not forwarded.
//   - A message with zero or several questions is FORMERR.
//   - The services lookup failing is SERVFAIL; so is every upstream failing.
//   - Forwarded UDP queries leave from a few long-lived sockets per upstream,
//     under an ID of ours; the reply is matched by that ID and the question
//     and goes back with the client's ID. Holding those ports keeps the app
//     from reusing one whose conntrack entry would skip the redirect. TCP
//     queries get a connection each.
//   - At most 1024 UDP queries forward at once; beyond that a query is
//     SERVFAIL at once. Mesh names are answered on the UDP read loop itself,
//     so [Services.LookupVIP] must not block. On Linux the loop reads and
//     writes up to 32 datagrams per system call (recvmmsg, sendmmsg), and
//     replies of one length to one client go as one UDP GSO send; it never
//     waits for a batch to fill. The common mesh query (NAME.SUFFIX.
//     A or AAAA, at most an OPT without options) is answered from its bytes
//     without unpacking; the reply is the same as the general path's. SRV
//     questions, which may wait for Consul's first answer about the ports
//     ([Services.LookupPorts]), go to a goroutine.
//   - A forwarded UDP query takes no goroutine: the loop sends the queries
//     of one batch to the upstream together, and each upstream socket's
//     reader reads replies in batches and sends them to their clients
//     together; a timer per query fails it over to the next upstream.
package dns
