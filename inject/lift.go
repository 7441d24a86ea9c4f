package inject

import (
	"strings"

	"gopkg.in/yaml.v3"
)

// liftV1 turns a compose file of format version 1 (services at the top
// level, no services: key; the seed articles' format) into the current
// format, in place, and tells whether it did. compose-go reads only the
// current format.
func liftV1(root *yaml.Node, rep *reporter) bool {
	if _, v := entry(root, "services"); v != nil {
		return false
	}
	// Version 1 has no other top-level keys than services; anything else
	// (version, networks, volumes, x-*) means a later format.
	if len(root.Content) == 0 {
		return false
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], deref(root.Content[i+1])
		if isMerge(k) || strings.HasPrefix(k.Value, "x-") || v.Kind != yaml.MappingNode {
			return false
		}
		switch k.Value {
		case "version", "networks", "volumes", "secrets", "configs", "name", "include", "models":
			return false
		}
	}
	services := mapping(root.Content...)
	key := scalar("services")
	// The file's head comment stays at its head.
	key.HeadComment, root.Content[0].HeadComment = root.Content[0].HeadComment, ""
	key.LineComment = "# " + marker + ": compose file format version 1 lifted to the current format"
	root.Content = []*yaml.Node{key, services}
	for i := 0; i+1 < len(services.Content); i += 2 {
		liftService(services.Content[i].Value, deref(services.Content[i+1]), rep)
	}
	rep.change("", "compose file format version 1 (services at the top level) lifted to the current format")
	return true
}

// liftService renames the service keys that version 1 spelled otherwise.
func liftService(name string, svc *yaml.Node, rep *reporter) {
	for i := 0; i+1 < len(svc.Content); i += 2 {
		k := svc.Content[i]
		if k.Value == "net" {
			k.Value = "network_mode"
			rep.change(name, "net: renamed network_mode")
		}
	}
	// dockerfile: beside build: DIR → build: {context: DIR, dockerfile: F}.
	if _, df := entry(svc, "dockerfile"); df != nil {
		if _, b := entry(svc, "build"); b != nil && b.Kind == yaml.ScalarNode {
			mapSet(svc, "build", mapping(scalar("context"), b, scalar("dockerfile"), df))
			mapDelete(svc, "dockerfile")
			rep.change(name, "dockerfile: moved into build:")
		}
	}
	// log_driver, log_opt → logging: {driver, options}.
	_, drv := entry(svc, "log_driver")
	_, opt := entry(svc, "log_opt")
	if drv != nil || opt != nil {
		logging := mapping()
		if drv != nil {
			logging.Content = append(logging.Content, scalar("driver"), drv)
			mapDelete(svc, "log_driver")
		}
		if opt != nil {
			logging.Content = append(logging.Content, scalar("options"), opt)
			mapDelete(svc, "log_opt")
		}
		mapSet(svc, "logging", logging)
		rep.change(name, "log_driver, log_opt: moved into logging:")
	}
}

// swarmHints reports classic Swarm's scheduling hints (ACS's files write
// them as environment entries), which compose ignores.
func swarmHints(name string, svc *yaml.Node, rep *reporter) {
	for _, e := range pairs(lookup(svc, "environment")) {
		for _, hint := range []string{"constraint:", "affinity:", "reschedule:"} {
			if strings.HasPrefix(e.key, hint) {
				rep.untranslated(name, "environment %s: a scheduling hint of classic Docker Swarm (ACS's scheduler), which compose ignores", e.key)
			}
		}
	}
}
