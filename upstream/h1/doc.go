// Package h1 is the HTTP/1.1 front-end of upstream: a forwarder of our
// own that proxies each request of an app's connection to the instance
// the routing core (upstream.Mesh) picks for it.
//
// One loop in the connection's goroutine reads each request head in
// place, refuses what an instance could read differently (smuggling),
// writes the rewritten head to a pooled keep-alive connection to the
// instance and relays the answer, with deadlines instead of goroutines
// and contexts. Its waits on an instance are cut in slices (h1wait.go),
// between which it looks, without reading, whether the app left (the
// instance connection then closes, not counted against the instance) or
// whether the instance answered instead of reading the request body (that
// answer is relayed; interim 1xx heads alone are not such an answer). An
// app that only half-closes is taken as gone too, and gets a 502
// app-closed if nothing of its answer was written yet. Answers delimited
// by the instance's close reach the app in chunks; an answer cut short
// (the instance failed, or the app half-closed, mid-answer) ends the
// app's connection with a reset, so that the app sees an error and never
// takes a part for the whole.
//
// What it does not do (upgrades such as websocket, Expect: 100-continue,
// HTTP/1.0, CONNECT, absolute-form targets) it hands, before answering
// anything on that connection, to the Config.HandOff it is given (the
// dispatcher wires upstream/httpfallback there); it imports no other
// front-end. Picking, retries and error answers are the core's.
package h1
