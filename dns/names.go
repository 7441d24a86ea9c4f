package dns

import "strings"

// nameKind says how a query name relates to the mesh suffixes.
type nameKind int

const (
	// notMesh names are forwarded upstream.
	notMesh nameKind = iota
	// meshApex is a suffix itself, e.g. "local.".
	meshApex
	// meshService is SERVICE.SUFFIX. with a valid service label, or
	// TAG.SERVICE.SUFFIX., a tag subset (service "tag.service").
	meshService
	// meshNoName is under a suffix but names no service: more labels
	// or a label no service can have. Answered NXDOMAIN.
	meshNoName
	// meshSRVName is _SERVICE._tcp.SUFFIX. (or _udp), the RFC 2782 name
	// of a service's SRV records, or _SERVICE._TAG.SUFFIX. for a subset,
	// as Consul's DNS has them: SRV only, no address.
	meshSRVName
)

// String names the kind for test failures and logs.
func (k nameKind) String() string {
	switch k {
	case notMesh:
		return "notMesh"
	case meshApex:
		return "meshApex"
	case meshService:
		return "meshService"
	case meshNoName:
		return "meshNoName"
	case meshSRVName:
		return "meshSRVName"
	}
	return "nameKind(?)"
}

// classifyName tells whether name (presentation format as miekg/dns gives
// it, fully qualified or not) is under one of suffixes, which must be
// lower-case, without dots at the ends, and sorted longest first so that
// "service.consul" wins over "consul". It returns the index of the matching
// suffix and, for meshService and meshSRVName, the lower-case service
// name: "web", or "v2.web" for the subset of web tagged v2.
//
// It runs on every query, so it allocates only to lower-case a service label
// that the client sent with upper-case letters (and to join a subset's).
func classifyName(name string, suffixes []string) (kind nameKind, suffix int, service string) {
	name = trimFinalDot(name)
	for i, sfx := range suffixes {
		if len(name) == len(sfx) && strings.EqualFold(name, sfx) {
			return meshApex, i, ""
		}
		dot := len(name) - len(sfx) - 1
		if dot < 0 || name[dot] != '.' || isEscaped(name, dot) || !strings.EqualFold(name[dot+1:], sfx) {
			continue
		}
		label := name[:dot]
		if isServiceLabel(label) {
			return meshService, i, lowerASCII(label)
		}
		first, second, two := strings.Cut(label, ".")
		if !two || !isServiceLabel(first) || !isServiceLabel(second) {
			// More labels, or bytes a service name cannot hold (escapes
			// included): no service by that name either way.
			return meshNoName, i, ""
		}
		if len(first) > 1 && first[0] == '_' && len(second) > 1 && second[0] == '_' {
			service := lowerASCII(first[1:])
			switch tag := lowerASCII(second[1:]); tag {
			case "tcp", "udp":
				return meshSRVName, i, service
			default:
				return meshSRVName, i, tag + "." + service
			}
		}
		return meshService, i, lowerASCII(label)
	}
	return notMesh, -1, ""
}

// trimFinalDot removes the root label's dot unless it is an escaped "\.".
func trimFinalDot(name string) string {
	last := len(name) - 1
	if last >= 0 && name[last] == '.' && !isEscaped(name, last) {
		return name[:last]
	}
	return name
}

// isEscaped reports whether the byte at i is preceded by an odd number of
// backslashes, i.e. is part of the label rather than a separator.
func isEscaped(name string, i int) bool {
	n := 0
	for j := i - 1; j >= 0 && name[j] == '\\'; j-- {
		n++
	}
	return n%2 == 1
}

// isServiceLabel reports whether label can be a service name: one DNS label
// of letters, digits, '-' and '_'.
func isServiceLabel(label string) bool {
	if label == "" || len(label) > 63 {
		return false
	}
	for i := 0; i < len(label); i++ {
		if !isServiceByte(label[i]) {
			return false
		}
	}
	return true
}

func isServiceByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// lowerASCII lower-cases s, returning s itself when it has no upper-case
// letter so the common case does not allocate.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
