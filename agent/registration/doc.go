// Package registration registers the app meshlet sits beside in Consul,
// probes it locally and reports the result through a TTL check, and takes
// the registration away again when meshlet stops.
//
// It has three parts, used in this order by the agent:
//
//   - [Parse] reads registrator-style environment variables (SERVICE_NAME,
//     SERVICE_<port>_NAME, SERVICE_CHECK_HTTP, ...) into [Service] values,
//     with errors that name the variable at fault. Without a name it
//     returns nothing: meshlet is then a pure client sidecar.
//   - [Address] evaluates the go-sockaddr template that picks the address
//     callers reach the app on.
//   - A [Registrar] registers every service (retrying with backoff while
//     Consul is away), probes the app, keeps the TTL check current,
//     registers again when Consul forgot the service (a restarted dev
//     agent), and on shutdown marks the check critical and deregisters.
//
// A TTL check, rather than an HTTP or TCP check run by Consul, is used
// because Consul often cannot reach the container (another network, NAT),
// while meshlet, in the app's own network namespace, always can; and
// because meshlet can then say "stopping" before the app goes away.
package registration
