package inject

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/meshlet/meshlet/agent/registration"
)

// plan is what one app service's sidecar gets, and how many instances the
// app becomes.
type plan struct {
	env      []envVar // SERVICE_* settings of the sidecar, in order
	replicas int      // 1 unless the file asks for more
	from     []string // what the settings were translated from, for the sidecar's comment
}

type envVar struct{ key, value string }

func (p *plan) set(key, value string) {
	for i := range p.env {
		if p.env[i].key == key {
			p.env[i].value = value
			return
		}
	}
	p.env = append(p.env, envVar{key, value})
}

func (p *plan) get(key string) (string, bool) {
	for _, e := range p.env {
		if e.key == key {
			return e.value, true
		}
	}
	return "", false
}

// meshletChecks are the SERVICE_CHECK_* settings meshlet understands
// (agent/registration); registrator's others (script, docker, https,
// initial status) would stop the sidecar at start, so they stay where they
// are and are reported.
var meshletChecks = []string{"HTTP", "TCP", "INTERVAL", "TIMEOUT", "INITIAL_DELAY", "TTL",
	"DEREGISTER_AFTER", "SUCCESS_THRESHOLD", "FAILURE_THRESHOLD"}

// routingPort returns the port of an aliyun.routing.port_N label.
func routingPort(key string) (string, bool) {
	n, ok := strings.CutPrefix(key, "aliyun.routing.port_")
	return n, ok && isDigits(n)
}

// planService reads what the app service svc (named name, the base name of
// its instances) says about its mesh settings, takes the translated parts
// off the app, and returns the sidecar's plan.
func planService(name string, svc *yaml.Node, rep *reporter) plan {
	p := plan{replicas: 1}
	var ports []int // registered ports, from routing labels or the probe

	// acsrouting's labels.
	_, labelsNode := entry(svc, "labels")
	var sticky bool
	var probe *url.URL
	var probeLabel string
	routeNames := map[int]string{}
	for _, l := range pairs(lookup(svc, "labels")) {
		if !strings.HasPrefix(l.key, "aliyun.") {
			continue
		}
		translated := true
		switch m, isRoute := routingPort(l.key); {
		case isRoute:
			port, err := strconv.Atoi(m)
			if err != nil || port < 1 || port > 65535 {
				rep.untranslated(name, "%s: %q is not a port", l.key, m)
				translated = false
				break
			}
			local := ""
			for _, route := range strings.Split(l.value, ";") {
				route = strings.TrimSpace(route)
				host := route
				if u, err := url.Parse(route); err == nil && u.Host != "" {
					host = u.Host
					if u.Path != "" && u.Path != "/" {
						host += u.Path
					}
				}
				if h, ok := strings.CutSuffix(host, ".local"); ok && isDNSLabel(h) {
					local = h
					continue
				}
				if route != "" {
					rep.untranslated(name, "%s: route %q: acsrouting's public routes (a domain on the cluster's load balancer) have no meshlet counterpart; publish the port with ports: or put a proxy in front", l.key, route)
				}
			}
			if local == "" {
				local = dnsName(name)
			}
			routeNames[port] = local
			ports = append(ports, port)
			p.from = append(p.from, l.key)
		case l.key == "aliyun.scale":
			n, err := strconv.Atoi(strings.TrimSpace(l.value))
			if err != nil || n < 0 {
				rep.untranslated(name, "%s: %q is not a number of instances", l.key, l.value)
				translated = false
				break
			}
			p.replicas = n
			if n == 0 {
				translated = false // the app stays as it is, without a sidecar
				break
			}
			p.from = append(p.from, l.key)
		case l.key == "aliyun.routing.session_sticky":
			b, err := strconv.ParseBool(strings.TrimSpace(l.value))
			if err != nil {
				rep.untranslated(name, "%s: %q is not true or false", l.key, l.value)
				translated = false
				break
			}
			sticky = b
		case l.key == "aliyun.probe.url":
			u, err := url.Parse(strings.TrimSpace(l.value))
			if err != nil || (u.Scheme != "http" && u.Scheme != "tcp") || u.Hostname() != "container" {
				rep.untranslated(name, "%s: %q: meshlet probes the app by http://container:PORT/PATH or tcp://container:PORT only", l.key, l.value)
				translated = false
				break
			}
			probe, probeLabel = u, l.key
		case l.key == "aliyun.probe.initial_delay_seconds", l.key == "aliyun.probe.timeout_seconds":
			n, err := strconv.Atoi(strings.TrimSpace(l.value))
			if err != nil || n < 0 || (n == 0 && l.key == "aliyun.probe.timeout_seconds") {
				rep.untranslated(name, "%s: %q is not a number of seconds", l.key, l.value)
				translated = false
				break
			}
			key := "SERVICE_CHECK_INITIAL_DELAY"
			if l.key == "aliyun.probe.timeout_seconds" {
				key = "SERVICE_CHECK_TIMEOUT"
			}
			p.set(key, fmt.Sprintf("%ds", n))
			p.from = append(p.from, l.key)
		default:
			rep.untranslated(name, "label %s: %s", l.key, acsReason(l.key))
			translated = false
		}
		if translated && labelsNode != nil && !removeItem(deref(labelsNode), l.node) {
			rep.untranslated(name, "label %s is translated but comes from a shared anchor, so it stays there", l.key)
		}
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)

	if probe != nil {
		port := 80
		if probe.Port() != "" {
			port, _ = strconv.Atoi(probe.Port())
		}
		switch {
		case len(ports) == 0:
			ports = []int{port}
			routeNames[port] = dnsName(name)
		case !slices.Contains(ports, port):
			rep.untranslated(name, "%s: port %d is not the routed port %v: meshlet probes the port it registers", probeLabel, port, ports)
			probe = nil
		}
	}
	if probe != nil {
		if probe.Scheme == "http" {
			path := probe.RequestURI()
			p.set("SERVICE_CHECK_HTTP", path)
		} else {
			p.set("SERVICE_CHECK_TCP", "true")
		}
		p.from = append(p.from, probeLabel)
	}

	swarmHints(name, svc, rep)

	// Registration: the routed ports, else an explicit x-meshlet setting,
	// else the ports the service exposes or publishes.
	xm := lookup(svc, "x-meshlet")
	if len(ports) == 0 {
		if v := lookup(xm, "port"); v != nil {
			if n, err := strconv.Atoi(v.Value); err == nil && n > 0 && n < 65536 {
				ports = []int{n}
				routeNames[n] = dnsName(name)
				p.from = append(p.from, "x-meshlet.port")
			} else {
				rep.untranslated(name, "x-meshlet.port: %q is not a port", v.Value)
			}
		}
	}
	if v := lookup(xm, "name"); v != nil {
		if isDNSLabel(v.Value) {
			for port := range routeNames {
				routeNames[port] = v.Value
			}
			p.set("SERVICE_NAME", v.Value)
			p.from = append(p.from, "x-meshlet.name")
		} else {
			rep.untranslated(name, "x-meshlet.name: %q is not a DNS label", v.Value)
		}
	}
	switch {
	case len(ports) == 1:
		if _, ok := p.get("SERVICE_NAME"); !ok {
			p.set("SERVICE_NAME", routeNames[ports[0]])
		}
		p.set("SERVICE_PORT", strconv.Itoa(ports[0]))
	case len(ports) > 1:
		for _, port := range ports {
			p.set(fmt.Sprintf("SERVICE_%d_NAME", port), routeNames[port])
		}
	default:
		if listened := listenPorts(svc); len(listened) > 0 {
			if _, ok := p.get("SERVICE_NAME"); !ok {
				p.set("SERVICE_NAME", dnsName(name))
			}
			if len(listened) == 1 {
				p.set("SERVICE_PORT", strconv.Itoa(listened[0]))
			} else {
				rep.note(name, "listens on ports %v: meshlet registers the one the app listens on alone; set SERVICE_PORT on the sidecar if it listens on several", listened)
			}
		}
	}
	if sticky {
		if _, ok := p.get("SERVICE_NAME"); ok || len(ports) > 0 {
			// acsrouting's session persistence is a cookie named CONTAINERID;
			// the same name keeps clients that hold one pinned.
			p.set("SERVICE_MESHLET_STICKY", "cookie")
			p.set("SERVICE_MESHLET_STICKY_COOKIE", "CONTAINERID")
			p.from = append(p.from, "aliyun.routing.session_sticky")
		} else {
			rep.untranslated(name, "aliyun.routing.session_sticky: no routed port to make sticky")
		}
	}

	// registrator's variables, from the environment and from labels (it
	// reads both): they move to the sidecar.
	for _, field := range []string{"environment", "labels"} {
		moveRegistrator(name, svc, field, &p, rep)
	}

	// Replicas.
	for _, r := range []struct{ path, key string }{{"deploy", "replicas"}, {"", "scale"}} {
		parent := svc
		if r.path != "" {
			parent = lookup(svc, r.path)
		}
		v := lookup(parent, r.key)
		if v == nil {
			continue
		}
		n, err := strconv.Atoi(v.Value)
		if err != nil || n < 0 {
			rep.untranslated(name, "%s: %q is not a number of instances", strings.TrimPrefix(r.path+"."+r.key, "."), v.Value)
			continue
		}
		if p.replicas > 1 && n != p.replicas {
			rep.untranslated(name, "%s: %d disagrees with %d instances asked elsewhere; keeping %d", strings.TrimPrefix(r.path+"."+r.key, "."), n, p.replicas, p.replicas)
		} else {
			p.replicas = n
		}
		if p.replicas > 1 {
			p.from = append(p.from, strings.TrimPrefix(r.path+"."+r.key, "."))
			if !mapDelete(parent, r.key) {
				rep.untranslated(name, "%s comes from a shared anchor and stays there", r.key)
			}
			if r.path != "" && len(parent.Content) == 0 {
				mapDelete(svc, r.path)
			}
		}
	}

	// external_links to acsrouting's NAME.local names: meshlet's DNS
	// answers those names, so the links are not needed.
	if _, el := entry(svc, "external_links"); el != nil && el.Kind == yaml.SequenceNode {
		var kept []*yaml.Node
		for _, it := range el.Content {
			target, _, _ := strings.Cut(it.Value, ":")
			if strings.HasSuffix(target, ".local") {
				rep.change(name, "external_links: %s removed: meshlet's DNS answers %s", it.Value, target)
				continue
			}
			kept = append(kept, it)
		}
		el.Content = kept
		if len(kept) == 0 {
			mapDelete(svc, "external_links")
		}
	}
	if _, lb := entry(svc, "labels"); lb != nil && len(deref(lb).Content) == 0 && lb.Kind != yaml.AliasNode {
		mapDelete(svc, "labels")
	}
	// The name and port first, as people write them.
	rank := func(k string) int {
		switch {
		case k == "SERVICE_NAME":
			return 0
		case k == "SERVICE_PORT":
			return 1
		case strings.HasSuffix(k, "_NAME"):
			return 2
		}
		return 3
	}
	slices.SortStableFunc(p.env, func(a, b envVar) int { return rank(a.key) - rank(b.key) })

	// The sidecar reads these with the same parser at start; what it would
	// refuse is said now (values compose fills in later are not checked).
	var environ []string
	for _, e := range p.env {
		if !strings.Contains(e.value, "$") {
			environ = append(environ, e.key+"="+e.value)
		}
	}
	if _, err := registration.Parse(environ, "inject"); err != nil {
		rep.untranslated(name, "the sidecar would refuse to start: %v; fix it in its environment", err)
	}
	return p
}

// moveRegistrator moves SERVICE_* (and MESHLET_SERVICE_*) of the app's
// environment or labels to the sidecar's plan.
func moveRegistrator(name string, svc *yaml.Node, field string, p *plan, rep *reporter) {
	own := func() *yaml.Node { _, v := entry(svc, field); return v }
	var moved []string
	for _, e := range pairs(lookup(svc, field)) {
		key := strings.TrimPrefix(e.key, "MESHLET_")
		if !strings.HasPrefix(key, "SERVICE_") || !e.hasValue {
			continue
		}
		if check, ok := strings.CutPrefix(checkKey(key), "CHECK_"); ok && !slices.Contains(meshletChecks, check) {
			rep.untranslated(name, "%s %s: meshlet probes the app itself, by HTTP or TCP only (SERVICE_CHECK_HTTP, SERVICE_CHECK_TCP); it stays on the app", field, e.key)
			continue
		}
		if old, ok := p.get(e.key); ok && old != e.value {
			rep.note(name, "%s %s=%s overrides %q translated from the labels", field, e.key, e.value, old)
		}
		p.set(e.key, e.value)
		moved = append(moved, e.key)
		n := own()
		switch {
		case n == nil || e.node == nil || n.Kind == yaml.AliasNode:
			// Inherited through an anchor that other services may share: the
			// app gets its own copy without the moved variable.
			n = materialize(lookup(svc, field))
			mapSet(svc, field, n)
			for _, it := range pairs(n) {
				if it.key == e.key {
					removeItem(n, it.node)
				}
			}
			rep.note(name, "%s: now its own copy (it came from an anchor), without %s", field, e.key)
		default:
			removeItem(n, e.node)
		}
	}
	if len(moved) > 0 {
		p.from = append(p.from, field+" "+strings.Join(moved, ", "))
		if n := own(); n != nil && n.Kind != yaml.AliasNode && len(n.Content) == 0 {
			mapDelete(svc, field)
		}
	}
}

// checkKey strips SERVICE_ and a port (SERVICE_80_CHECK_HTTP → CHECK_HTTP).
func checkKey(key string) string {
	rest := strings.TrimPrefix(key, "SERVICE_")
	if head, tail, ok := strings.Cut(rest, "_"); ok && isDigits(head) {
		return tail
	}
	return rest
}

// materialize copies an environment or labels value, merges resolved, as a
// mapping of its own.
func materialize(n *yaml.Node) *yaml.Node {
	out := mapping()
	for _, e := range pairs(n) {
		v := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: ""}
		if e.hasValue {
			v = quotedIfNeeded(e.value)
		}
		out.Content = append(out.Content, scalar(e.key), v)
	}
	return out
}

// listenPorts are the container ports the service exposes or publishes.
func listenPorts(svc *yaml.Node) []int {
	var out []int
	add := func(s string) {
		s, proto, _ := strings.Cut(s, "/")
		if proto != "" && proto != "tcp" {
			return
		}
		if lo, hi, ok := strings.Cut(s, "-"); ok {
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && b >= a && b-a < 100 {
				for i := a; i <= b; i++ {
					out = append(out, i)
				}
			}
			return
		}
		if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65536 {
			out = append(out, n)
		}
	}
	for _, e := range stringsOf(lookup(svc, "expose")) {
		add(e)
	}
	if ports := lookup(svc, "ports"); ports != nil && ports.Kind == yaml.SequenceNode {
		for _, it := range ports.Content {
			it = deref(it)
			if it.Kind == yaml.MappingNode {
				if t := lookup(it, "target"); t != nil {
					proto := ""
					if pr := lookup(it, "protocol"); pr != nil {
						proto = "/" + pr.Value
					}
					add(t.Value + proto)
				}
				continue
			}
			// [[IP:]HOST:]CONTAINER[/proto]; an IPv6 host address is bracketed.
			s := it.Value
			if i := strings.LastIndex(s, ":"); i >= 0 {
				s = s[i+1:]
			}
			add(s)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// acsReason says why an ACS label has no translation.
func acsReason(key string) string {
	switch {
	case strings.HasPrefix(key, "aliyun.log"):
		return "log collection by ACS's agent, not a mesh feature; use a logging driver"
	case strings.HasPrefix(key, "aliyun.probe."):
		return "meshlet probes by HTTP or TCP (aliyun.probe.url) only"
	case strings.HasPrefix(key, "aliyun.lb."), strings.HasPrefix(key, "aliyun.proxy."), strings.HasPrefix(key, "aliyun.routing."):
		return "ACS's load balancer and public routing, outside the mesh; publish ports or put a proxy in front"
	case key == "aliyun.latest_image", strings.HasPrefix(key, "aliyun.rolling_updates"), key == "aliyun.depends",
		key == "aliyun.global", strings.HasPrefix(key, "aliyun.auto_scaling"), key == "aliyun.reschedule":
		return "ACS's scheduler and deployment, which compose does not have"
	}
	return "no meshlet counterpart"
}

// dnsName makes a compose service name usable as a mesh name (NAME.local).
func dnsName(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b), "-")
}

func isDNSLabel(s string) bool {
	return s != "" && len(s) <= 63 && dnsName(s) == strings.ToLower(s) && s[0] != '-'
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// quotedIfNeeded keeps strings that YAML would read as something else
// strings.
func quotedIfNeeded(s string) *yaml.Node {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return quoted(s)
	}
	if str, ok := v.(string); ok && str == s {
		return scalar(s)
	}
	return quoted(s)
}
