// Package inject turns a docker compose file into a meshed one: a meshlet
// sidecar beside every app service, replicas as named pairs, a Consul server
// when the file has none, and the labels and variables of the setups users
// come from (acsrouting's aliyun.* labels, registrator's SERVICE_*)
// translated into the sidecars' settings. It edits the user's YAML node by
// node, so comments, key order and anchors survive; what it adds carries a
// comment that says so.
//
// The package itself validates nothing beyond YAML: a [Validator] (compose-go
// in cmd/meshlet-inject and in the tests) checks the input and the output as
// docker compose reads them. It is kept out of this package so that the
// sidecar's binary does not carry compose-go (see the README).
package inject

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Options of one injection.
type Options struct {
	// Image of the sidecars.
	Image string
	// Consul is the address of an existing Consul agent (HOST:PORT). Empty:
	// use the file's Consul service, or add a dev-mode server.
	Consul string
	// ConsulImage is the image of the Consul server inject adds.
	ConsulImage string
	// Filename names the input in errors.
	Filename string
	// Validate, when set, checks the input and the output as docker compose
	// reads them.
	Validate Validator
}

// DefaultImage is the sidecar image: the name the README builds and runs.
const DefaultImage = "meshlet"

// DefaultConsulImage is Consul's public image, as compose.yaml uses it.
const DefaultConsulImage = "hashicorp/consul:1.20"

// Validator checks a compose file in the current format. Its error should
// say where: a dotted path (services.web.ports) as compose-go's errors do,
// or a service's name in quotes; inject turns either into a line.
type Validator func(ctx context.Context, filename string, content []byte) error

// Result of an injection.
type Result struct {
	// Output is the meshed file; the input itself when nothing changed.
	Output []byte
	// Changed tells whether Output differs from the input.
	Changed bool
	// Notes say what was done, and what could not be translated and why.
	Notes []Note
}

// Note is one line of the report.
type Note struct {
	Service string
	Text    string
	// Untranslated marks a setting inject left as it was because meshlet
	// has no counterpart; the user must decide.
	Untranslated bool
	// Change marks a change to the user's services (a note without it is
	// information).
	Change bool
}

func (n Note) String() string {
	prefix := ""
	if n.Untranslated {
		prefix = "NOT TRANSLATED: "
	}
	if n.Service == "" {
		return prefix + n.Text
	}
	return n.Service + ": " + prefix + n.Text
}

type reporter struct{ notes []Note }

func (r *reporter) change(svc, format string, a ...any) {
	r.notes = append(r.notes, Note{Service: svc, Text: fmt.Sprintf(format, a...), Change: true})
}

func (r *reporter) note(svc, format string, a ...any) {
	r.notes = append(r.notes, Note{Service: svc, Text: fmt.Sprintf(format, a...)})
}

func (r *reporter) untranslated(svc, format string, a ...any) {
	r.notes = append(r.notes, Note{Service: svc, Text: fmt.Sprintf(format, a...), Untranslated: true})
}

// marker starts the comment on everything inject adds.
const marker = "added by meshlet inject"

// Inject meshes the compose file src.
func Inject(ctx context.Context, src []byte, opt Options) (Result, error) {
	if opt.Image == "" {
		opt.Image = DefaultImage
	}
	if opt.ConsulImage == "" {
		opt.ConsulImage = DefaultConsulImage
	}
	if opt.Filename == "" {
		opt.Filename = "compose.yaml"
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(src, &doc); err != nil {
		if opt.Validate != nil {
			// compose-go's own YAML parser, as docker compose would say it.
			if verr := opt.Validate(ctx, opt.Filename, src); verr != nil {
				return Result{}, verr
			}
		}
		return Result{}, fmt.Errorf("%s: %w", opt.Filename, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return Result{}, fmt.Errorf("%s: not a compose file: the top level must be a mapping", opt.Filename)
	}
	root := doc.Content[0]
	rep := &reporter{}

	lifted := liftV1(root, rep)
	if opt.Validate != nil {
		in := src
		if lifted {
			var err error
			if in, err = encode(&doc); err != nil {
				return Result{}, err
			}
		}
		if err := opt.Validate(ctx, opt.Filename, in); err != nil {
			return Result{}, locate(opt.Filename, &doc, err)
		}
	}
	services := deref(lookup(root, "services"))
	if services == nil || services.Kind != yaml.MappingNode {
		return Result{}, fmt.Errorf("%s: no services", opt.Filename)
	}

	if err := meshServices(root, services, opt, rep); err != nil {
		return Result{}, fmt.Errorf("%s: %w", opt.Filename, err)
	}
	changed := lifted
	for _, n := range rep.notes {
		changed = changed || n.Change
	}
	if !changed {
		return Result{Output: src, Notes: append(rep.notes, Note{Text: "nothing to change"})}, nil
	}
	// What inject adds is written in block style, which a flow mapping
	// around it would forbid.
	root.Style &^= yaml.FlowStyle
	services.Style &^= yaml.FlowStyle
	if _, v := entry(root, "version"); v != nil {
		mapDelete(root, "version")
		rep.change("", "version: %s removed: the output follows the Compose Specification (docker compose, docker-compose 1.27 and later)", v.Value)
	}
	out, err := encode(&doc)
	if err != nil {
		return Result{}, err
	}
	if opt.Validate != nil {
		if err := opt.Validate(ctx, opt.Filename, out); err != nil {
			return Result{}, fmt.Errorf("%s: the meshed file does not validate (a bug of meshlet inject, please report it): %w", opt.Filename, err)
		}
	}
	return Result{Output: out, Changed: true, Notes: rep.notes}, nil
}

// meshServices adds the sidecars, the instances and Consul.
func meshServices(root, services *yaml.Node, opt Options, rep *reporter) error {
	names := map[string]bool{}
	for i := 0; i+1 < len(services.Content); i += 2 {
		names[services.Content[i].Value] = true
	}
	taken := func(s string) bool { return names[s] }
	usedAnchors := map[string]bool{}
	anchors(root, usedAnchors)

	// Who shares whose namespace, and which sharer is a meshlet.
	hasSidecar := map[string]bool{}
	consulName := ""
	for i := 0; i+1 < len(services.Content); i += 2 {
		name, svc := services.Content[i].Value, deref(services.Content[i+1])
		if nm := lookup(svc, "network_mode"); nm != nil {
			if target, ok := strings.CutPrefix(nm.Value, "service:"); ok && isMeshlet(name, target, svc) {
				hasSidecar[target] = true
			}
		}
		if consulName == "" && isConsul(name, svc) {
			consulName = name
		}
	}

	type app struct {
		name string
		idx  int // of its key in services.Content
		plan plan
	}
	var apps []app
	for i := 0; i+1 < len(services.Content); i += 2 {
		name, svc := services.Content[i].Value, deref(services.Content[i+1])
		switch {
		case svc.Kind != yaml.MappingNode:
			return fmt.Errorf("line %d: service %s is not a mapping", services.Content[i].Line, name)
		case hasSidecar[name]:
			continue // meshed already
		case strings.Contains(imageOf(svc), "registrator"):
			rep.untranslated(name, "registrator is not needed beside meshlet's sidecars, which register the apps themselves; remove it (left in place, without a sidecar)")
			continue
		case lookup(svc, "network_mode") != nil:
			if !isMeshlet(name, "", svc) {
				rep.note(name, "skipped: network_mode %s (it has no network of its own for a sidecar to share)", lookup(svc, "network_mode").Value)
			}
			continue
		case isMeshlet(name, "", svc):
			continue
		case name == consulName:
			rep.note(name, "the Consul server: no sidecar")
			continue
		case optedOut(svc):
			rep.note(name, "skipped: opted out (x-meshlet: {inject: false} or label meshlet.inject=false)")
			continue
		}
		p := planService(name, svc, rep)
		if p.replicas == 0 {
			rep.note(name, "0 instances asked: no sidecar")
			continue
		}
		apps = append(apps, app{name: name, idx: i, plan: p})
	}
	if len(apps) == 0 {
		return nil
	}

	consulAddr := opt.Consul
	var dependsOn []string
	if consulAddr == "" {
		if consulName == "" {
			consulName = uniqueName("consul", taken)
			names[consulName] = true
			k := scalar(consulName)
			k.HeadComment = "# " + marker + ": a single Consul server in dev mode (no persistence, no ACLs).\n# For production, point the sidecars at your Consul: meshlet inject --consul HOST:PORT"
			v := mapping(
				scalar("image"), scalar(opt.ConsulImage),
				scalar("command"), flowSeq("agent", "-dev", "-client", "0.0.0.0", "-log-level", "warn"),
			)
			services.Content = append([]*yaml.Node{k, v}, services.Content...)
			for i := range apps {
				apps[i].idx += 2
			}
			rep.change(consulName, "added: a Consul server in dev mode (%s)", opt.ConsulImage)
		}
		consulAddr = consulName + ":8500"
		dependsOn = []string{consulName}
	}

	buildApp := func(a app) {
		key, val := services.Content[a.idx], services.Content[a.idx+1]
		svc := deref(val)
		sc := sidecar(opt.Image, a.name, consulAddr, dependsOn, a.plan)
		what := "client only (registers nothing)"
		if v, ok := a.plan.get("SERVICE_NAME"); ok {
			what = "registers " + v
			if p, ok := a.plan.get("SERVICE_PORT"); ok {
				what += " on port " + p
			}
		} else if len(a.plan.env) > 0 {
			what = "registers by " + a.plan.env[0].key
		}
		from := ""
		if len(a.plan.from) > 0 {
			from = " (from " + strings.Join(a.plan.from, "; ") + ")"
		}
		if a.plan.replicas == 1 {
			scName := uniqueName(a.name+"-meshlet", taken)
			names[scName] = true
			k := scalar(scName)
			k.HeadComment = fmt.Sprintf("# %s: %s's sidecar, %s%s", marker, a.name, what, from)
			mapSet(sc, "network_mode", scalar("service:"+a.name))
			reorderNetworkMode(sc)
			services.Content = slices.Insert(services.Content, a.idx+2, k, sc)
			rep.change(a.name, "sidecar %s: %s%s", scName, what, from)
			return
		}

		// N instances: the first holds the app's settings and an anchor, the
		// others merge it; each has its own sidecar.
		n := a.plan.replicas
		instances := make([]string, n)
		for i := range instances {
			instances[i] = uniqueName(fmt.Sprintf("%s-%d", a.name, i+1), taken)
			names[instances[i]] = true
		}
		if svc.Anchor == "" {
			svc.Anchor = uniqueName(dnsName(a.name), func(s string) bool { return usedAnchors[s] })
			usedAnchors[svc.Anchor] = true
		}
		sc.Anchor = uniqueName(dnsName(a.name)+"-meshlet", func(s string) bool { return usedAnchors[s] })
		usedAnchors[sc.Anchor] = true
		if lookup(svc, "networks") == nil {
			// Callers that used the service's own name still resolve it,
			// to any instance, as with docker compose --scale.
			mapSet(svc, "networks", mapping(scalar("default"), mapping(scalar("aliases"), flowSeq(a.name))))
		} else {
			rep.untranslated(a.name, "has networks of its own: its instances are %s; add the alias %s on each network if callers use that name", strings.Join(instances, ", "), a.name)
		}
		if cn := lookup(svc, "container_name"); cn != nil {
			rep.untranslated(a.name, "container_name %s: %d instances cannot share one container name; remove it", cn.Value, n)
		}
		if ports := lookup(svc, "ports"); ports != nil && fixedHostPort(ports) {
			rep.untranslated(a.name, "ports publish a fixed host port, which only one of the %d instances can bind", n)
		}
		var added []*yaml.Node
		for i, inst := range instances {
			ik := scalar(inst)
			sk := scalar(inst + "-meshlet")
			names[inst+"-meshlet"] = true
			var iv, sv *yaml.Node
			if i == 0 {
				ik.HeadComment = joinComments(key.HeadComment, fmt.Sprintf("# %s: instance 1 of %d of %s (renamed from %s)", marker, n, a.name, a.name))
				ik.Line = key.Line
				iv = val
				sv = sc
				mapSet(sv, "network_mode", scalar("service:"+inst))
				reorderNetworkMode(sv)
				sk.HeadComment = fmt.Sprintf("# %s: the sidecar of each instance of %s, %s%s", marker, a.name, what, from)
			} else {
				ik.HeadComment = fmt.Sprintf("# %s: instance %d of %d of %s", marker, i+1, n, a.name)
				mk, mv := mergeOf(svc)
				iv = mapping(mk, mv)
				mk, mv = mergeOf(sc)
				sv = mapping(mk, mv, scalar("network_mode"), scalar("service:"+inst))
			}
			added = append(added, ik, iv, sk, sv)
		}
		services.Content = slices.Replace(services.Content, a.idx, a.idx+2, added...)
		rep.change(a.name, "%d instances %s, each with a sidecar: %s%s", n, strings.Join(instances, ", "), what, from)
		renameDependents(services, a.name, instances, rep)
	}

	// Build from the last app backwards, so that earlier indexes hold; the
	// notes are kept in the file's order.
	slices.Reverse(apps)
	before := rep.notes
	var perApp [][]Note
	for _, a := range apps {
		rep.notes = nil
		buildApp(a)
		perApp = append(perApp, rep.notes)
	}
	rep.notes = before
	for i := len(perApp) - 1; i >= 0; i-- {
		rep.notes = append(rep.notes, perApp[i]...)
	}
	return nil
}

// sidecar builds the sidecar service of an app.
func sidecar(image, app, consulAddr string, dependsOn []string, p plan) *yaml.Node {
	env := mapping(scalar("CONSUL_HTTP_ADDR"), scalar(consulAddr))
	for _, e := range p.env {
		env.Content = append(env.Content, scalar(e.key), quotedIfNeeded(e.value))
	}
	sc := mapping(
		scalar("image"), scalar(image),
		scalar("cap_add"), flowSeq("NET_ADMIN"),
		scalar("restart"), scalar("unless-stopped"),
	)
	if len(dependsOn) > 0 {
		sc.Content = append(sc.Content, scalar("depends_on"), flowSeq(dependsOn...))
	}
	sc.Content = append(sc.Content,
		scalar("environment"), env,
		scalar("healthcheck"), mapping(
			scalar("test"), flowSeq("CMD", "meshlet", "health"),
			scalar("interval"), scalar("2s"),
		),
	)
	return sc
}

// reorderNetworkMode puts network_mode right after image, where a reader
// looks for what the sidecar is attached to.
func reorderNetworkMode(sc *yaml.Node) {
	for i := 0; i+1 < len(sc.Content); i += 2 {
		if sc.Content[i].Value == "network_mode" && i > 2 {
			k, v := sc.Content[i], sc.Content[i+1]
			sc.Content = slices.Delete(sc.Content, i, i+2)
			sc.Content = slices.Insert(sc.Content, 2, k, v)
			return
		}
	}
}

// renameDependents points depends_on entries naming a replicated app at all
// its instances, and reports other references.
func renameDependents(services *yaml.Node, old string, instances []string, rep *reporter) {
	for i := 0; i+1 < len(services.Content); i += 2 {
		name, svc := services.Content[i].Value, deref(services.Content[i+1])
		if svc.Kind != yaml.MappingNode {
			continue
		}
		_, dep := entry(svc, "depends_on")
		switch {
		case dep == nil:
		case dep.Kind == yaml.SequenceNode:
			for j, it := range dep.Content {
				if it.Value == old {
					items := make([]*yaml.Node, len(instances))
					for k, inst := range instances {
						items[k] = scalar(inst)
					}
					dep.Content = slices.Replace(dep.Content, j, j+1, items...)
					rep.change(name, "depends_on %s: now its instances %s", old, strings.Join(instances, ", "))
					break
				}
			}
		case dep.Kind == yaml.MappingNode:
			for j := 0; j+1 < len(dep.Content); j += 2 {
				if dep.Content[j].Value == old {
					var items []*yaml.Node
					for k, inst := range instances {
						v := dep.Content[j+1]
						if k > 0 {
							mk, mv := mergeOf(anchorOn(v, old+"-dependency"))
							v = mapping(mk, mv)
						}
						items = append(items, scalar(inst), v)
					}
					dep.Content = slices.Replace(dep.Content, j, j+2, items...)
					rep.change(name, "depends_on %s: now its instances %s", old, strings.Join(instances, ", "))
					break
				}
			}
		}
		for _, field := range []string{"volumes_from", "links"} {
			for _, ref := range stringsOf(lookup(svc, field)) {
				if target, _, _ := strings.Cut(ref, ":"); target == old {
					rep.untranslated(name, "%s %s: %s is now %s; point it at one of them", field, ref, old, strings.Join(instances, ", "))
				}
			}
		}
		if nm := lookup(svc, "network_mode"); nm != nil && nm.Value == "service:"+old {
			rep.untranslated(name, "network_mode %s: %s is now %s; point it at one of them", nm.Value, old, strings.Join(instances, ", "))
		}
	}
}

func anchorOn(n *yaml.Node, name string) *yaml.Node {
	if n.Anchor == "" {
		n.Anchor = name
	}
	return n
}

func fixedHostPort(ports *yaml.Node) bool {
	for _, it := range ports.Content {
		it = deref(it)
		if it.Kind == yaml.MappingNode {
			if lookup(it, "published") != nil {
				return true
			}
			continue
		}
		if strings.Contains(it.Value, ":") {
			return true
		}
	}
	return false
}

// isMeshlet tells a meshlet sidecar: its image is meshlet's (any registry
// or tag), its command runs meshlet, or it is named as inject names
// sidecars.
func isMeshlet(name, target string, svc *yaml.Node) bool {
	if repoOf(imageOf(svc)) == "meshlet" {
		return true
	}
	for _, f := range []string{"entrypoint", "command"} {
		if s := stringsOf(lookup(svc, f)); len(s) > 0 && (s[0] == "meshlet" || strings.HasSuffix(s[0], "/meshlet")) {
			return true
		}
	}
	return target != "" && name == target+"-meshlet"
}

func imageOf(svc *yaml.Node) string {
	if v := lookup(svc, "image"); v != nil {
		return v.Value
	}
	return ""
}

// repoOf is an image's last path component without tag or digest.
func repoOf(image string) string {
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(image, "/"); i >= 0 {
		image = image[i+1:]
	}
	image, _, _ = strings.Cut(image, ":")
	return image
}

func isConsul(name string, svc *yaml.Node) bool {
	repo := repoOf(imageOf(svc))
	return repo == "consul" || (name == "consul" && strings.Contains(repo, "consul"))
}

func optedOut(svc *yaml.Node) bool {
	if v := lookup(lookup(svc, "x-meshlet"), "inject"); v != nil {
		if b, err := strconv.ParseBool(v.Value); err == nil && !b {
			return true
		}
	}
	for _, l := range pairs(lookup(svc, "labels")) {
		if l.key == "meshlet.inject" {
			if b, err := strconv.ParseBool(l.value); err == nil && !b {
				return true
			}
		}
	}
	return false
}

func joinComments(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "\n" + b
}

// encode writes the document with two-space indentation and a blank line
// between top-level sections and between services, as people write
// compose files (yaml.v3 keeps comments but not blank lines).
func encode(doc *yaml.Node) ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("writing the meshed file: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("writing the meshed file: %w", err)
	}
	// yaml.v3 spells out the tag of merge keys (<<) it read; compose files
	// never do.
	mergeTag := regexp.MustCompile(`(?m)^(\s*(?:- )?)!!merge <<:`)
	b := mergeTag.ReplaceAll(buf.Bytes(), []byte("$1<<:"))
	return spaceOut(b), nil
}

// spaceOut puts a blank line before each top-level key and each service
// (with the comment block above it).
func spaceOut(b []byte) []byte {
	keyLine := regexp.MustCompile(`^( {0,2})[^\s#-][^:]*:(\s|$)`)
	lines := strings.Split(string(b), "\n")
	var out []string
	inServices := false
	for i, l := range lines {
		m := keyLine.FindStringSubmatch(l)
		blank := false
		if m != nil && len(m[1]) == 0 {
			inServices = strings.HasPrefix(l, "services:")
			blank = i > 0
		} else if m != nil && len(m[1]) == 2 && inServices {
			blank = true
		}
		if blank {
			// Before the comment block that belongs to this key.
			j := len(out)
			for j > 0 && strings.HasPrefix(strings.TrimSpace(out[j-1]), "#") && indentOf(out[j-1]) == len(m[1]) {
				j--
			}
			if j > 0 && strings.TrimSpace(out[j-1]) != "" && !(len(m[1]) == 2 && strings.HasPrefix(out[j-1], "services:")) {
				out = slices.Insert(out, j, "")
			}
		}
		out = append(out, l)
	}
	return []byte(strings.Join(out, "\n"))
}

func indentOf(s string) int { return len(s) - len(strings.TrimLeft(s, " ")) }

// locate adds the line of the place a validator's error names.
func locate(filename string, doc *yaml.Node, err error) error {
	// Compiled here, not at init: package variables would cost every
	// sidecar's start.
	quotedService := regexp.MustCompile(`service "([^"]+)"`)
	schemaPath := regexp.MustCompile(`validating [^:]+: ([^ ]+) `)
	msg := err.Error()
	line := 0
	if m := schemaPath.FindStringSubmatch(msg); m != nil {
		line = pathLine(doc.Content[0], m[1])
		// "additional properties 'x' not allowed": the line of x.
		if i := strings.Index(msg, "additional properties '"); i >= 0 {
			name, _, _ := strings.Cut(msg[i+len("additional properties '"):], "'")
			if l := pathLine(doc.Content[0], m[1]+"."+name); l > line {
				line = l
			}
		}
	} else if m := quotedService.FindStringSubmatch(msg); m != nil {
		line = pathLine(doc.Content[0], "services."+m[1])
	}
	if line > 0 {
		return fmt.Errorf("%s:%d: %w", filename, line, err)
	}
	return fmt.Errorf("%s: %w", filename, err)
}
