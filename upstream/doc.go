// Package upstream forwards the app's outbound connections to healthy
// instances of the service they are meant for.
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
//     that is safe and the retry budget allows (retryPick); requests in
//     flight are counted and passive health, which ejects instances that
//     keep failing, is fed;
//   - the answer: the sticky cookie of the instance that answered, when the
//     request did not carry it.
//
// HTTP/1.1 is proxied per request by a forwarder of our own (h1conn.go):
// one loop in ServeConn's goroutine reads each request head in place,
// refuses what an instance could read differently (smuggling), writes the
// rewritten head to a pooled keep-alive connection to the instance and
// relays the answer, with deadlines instead of goroutines and contexts.
// Its waits on an instance are cut in slices (h1wait.go), between which it
// looks, without reading, whether the app left (the instance connection
// then closes, not counted against the instance) or whether the instance
// answered instead of reading the request body (that answer is relayed;
// interim 1xx heads alone are not such an answer). An app that only
// half-closes is taken as gone too, and gets a 502 app-closed if nothing
// of its answer was written yet. Answers delimited by the instance's close
// reach the app in chunks; an answer cut short (the instance failed, or
// the app half-closed, mid-answer) ends the app's connection with a reset,
// so that the app sees an error and never takes a part for the whole.
// What it does not do (upgrades such as websocket, Expect: 100-continue,
// HTTP/1.0, CONNECT, absolute-form targets) it hands, before answering
// anything on that connection, to one internal net/http server and
// httputil.ReverseProxy. Both paths pick, retry and answer errors with
// the same code (pick.go). Anything else is proxied per connection as raw
// TCP.
//
// While Consul does not answer, the last good views keep routing
// (fail-static), for at most Config.MaxStale; they are saved in
// Config.StateDir so that a restart during an outage still routes.
//
// The package knows nothing of iptables or DNS: the agent hands [Mesh.ServeConn]
// connections it already accepted, together with the service they are for.
package upstream
