package upstream

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Overrides are the caller's own policy settings, which win over the
// service's meta ("SERVICE:key") or stand in for meta a service lacks
// ("*:key"). The zero value overrides nothing.
type Overrides struct {
	all      map[string]string            // key → value, for "*"
	services map[string]map[string]string // service (lower case) → key → value
}

// maxOverridesLen bounds the text ParseOverrides reads, as a flag or an
// environment variable would be.
const maxOverridesLen = 64 << 10

// ParseOverrides reads overrides written as comma-separated
// SERVICE:KEY=VALUE entries, where an entry without "SERVICE:" is for the
// service named last and "*" stands for every service, for example
//
//	web:sticky=cookie,sticky-cookie=CONTAINERID,api:balance=least-request
//
// KEY is a policy key (the meta key without "meshlet-"); every value is
// checked as the meta would be. Errors are one line and quote the entry.
func ParseOverrides(s string) (Overrides, error) {
	var ov Overrides
	if len(s) > maxOverridesLen {
		return ov, fmt.Errorf("longer than %d bytes", maxOverridesLen)
	}
	service := ""
	for _, entry := range strings.Split(s, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		quoted := quoteEntry(entry)
		kv := entry
		if name, rest, ok := strings.Cut(entry, ":"); ok && !strings.Contains(name, "=") {
			name = strings.ToLower(strings.TrimSpace(name))
			if name != "*" && !validServiceName(name) {
				return Overrides{}, fmt.Errorf("%s: %q is not a service name", quoted, name)
			}
			service, kv = name, rest
		}
		if service == "" {
			return Overrides{}, fmt.Errorf("%s: want SERVICE:KEY=VALUE (which service?)", quoted)
		}
		key, value, ok := strings.Cut(kv, "=")
		key, value = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(value)
		if !ok {
			return Overrides{}, fmt.Errorf("%s: want KEY=VALUE", quoted)
		}
		k, known := findPolicyKey(key)
		if !known {
			return Overrides{}, fmt.Errorf("%s: unknown key %q (want one of %s)", quoted, key, policyKeyNames())
		}
		var scratch Policy
		if err := k.parse(&scratch, value); err != nil {
			return Overrides{}, fmt.Errorf("%s: %s: %w", quoted, key, err)
		}
		ov.set(service, key, value)
	}
	return ov, nil
}

func (ov *Overrides) set(service, key, value string) {
	if service == "*" {
		if ov.all == nil {
			ov.all = map[string]string{}
		}
		ov.all[key] = value
		return
	}
	if ov.services == nil {
		ov.services = map[string]map[string]string{}
	}
	if ov.services[service] == nil {
		ov.services[service] = map[string]string{}
	}
	ov.services[service][key] = value
}

// String writes the overrides back in the form ParseOverrides reads,
// sorted, so they can be logged and compared.
func (ov Overrides) String() string {
	var parts []string
	write := func(service string, kv map[string]string) {
		for i, k := range slices.Sorted(maps.Keys(kv)) {
			if i == 0 {
				parts = append(parts, service+":"+k+"="+kv[k])
			} else {
				parts = append(parts, k+"="+kv[k])
			}
		}
	}
	write("*", ov.all)
	for _, s := range slices.Sorted(maps.Keys(ov.services)) {
		write(s, ov.services[s])
	}
	return strings.Join(parts, ",")
}

// validServiceName accepts what Consul accepts in practice for names that
// can be reached through DNS: letters, digits, '-', '_' and '.'.
func validServiceName(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, c := range []byte(s) {
		if !isAlnumByte(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isAlnumByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// quoteEntry quotes an entry for an error message, cut short so that one
// bad entry cannot make a huge line.
func quoteEntry(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return fmt.Sprintf("%q", s)
}
