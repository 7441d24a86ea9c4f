// Package upstream is meshlet's routing core: it knows which instance a
// request or connection of the app goes to, and speaks no wire protocol.
// The protocol front-ends (upstream/h1, upstream/httpfallback,
// upstream/tcp), which upstream/outbound chooses between, ask it.
//
// It watches Consul (the catalog for which services exist, and every
// registered instance of every service in use, with its checks) and keeps
// each service's [serviceView]: its [Policy], derived from the instances'
// meta and the caller's [Overrides], and immutable [EndpointSet]s that
// readers load without locking. A request is routed in this order:
//
//   - the set: the passing instances; right after an outage of Consul, also
//     those that passed before it (settle); when none passes, all
//     registered ones if the policy allows panic routing, else a 503;
//   - the instance: the one a valid sticky cookie names, if it is in the
//     set and not ejected; else the policy's [Selector] (round-robin or
//     least-request, both weighted) among the instances not ejected;
//   - the attempts: a failed attempt is retried on an untried instance when
//     that is safe and the retry budget allows ([Mesh.Retry]); requests in
//     flight are counted and passive health, which ejects instances that
//     keep failing, is fed;
//   - the answer: the sticky cookie of the instance that answered, when the
//     request did not carry it.
//
// The front-ends do all of that through one small API (pick.go,
// attempt.go): a [Target] names the service of a connection,
// [Mesh.Choose] routes a request into a [Pick], [Mesh.Answered],
// [Mesh.Connected], [Mesh.Failed] and [Pick.InFlight] report how its
// attempts go, [Mesh.Retry] says whether a failed one goes elsewhere,
// [Mesh.FailureAnswer] gives the words of the error the app gets and
// [Pick.PinCookie] the cookie that pins it. Every connection to an
// instance is made by [Mesh.Dial], so that how instances are reached
// (plain TCP, or Consul Connect mTLS to the instance's sidecar:
// connect.go, connectdial.go, intentions.go) is the core's business
// alone; [Mesh.AppendClientIP] says which address X-Forwarded-For names
// for the app.
//
// A tag subset ("v2.web": the instances of web tagged v2) is routed as a
// service of its own with its service's policy, fed by its service's
// one watch rather than a query of its own (subset.go).
//
// While Consul does not answer, the last good views keep routing
// (fail-static), for at most Config.MaxStale; they are saved in
// Config.StateDir so that a restart during an outage still routes.
//
// The package knows nothing of iptables or DNS, nor of the front-ends:
// the agent builds the Mesh, runs it and hands it to upstream/outbound.
package upstream
