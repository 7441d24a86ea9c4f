package registration

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Service is one registration of the app in Consul.
type Service struct {
	// ID is the Consul service ID. Unless SERVICE_ID sets it, it is
	// HOSTNAME-NAME-PORT, unique per container because container hostnames
	// are; it stays empty until a discovered port is known.
	ID   string
	Name string
	// Port is the app's port; 0 means "discover the app's single listening
	// TCP port" (see [Registrar]).
	Port int
	Tags []string
	// Meta holds the other SERVICE_<KEY> variables, as registrator does:
	// key lower-cased, value as given.
	Meta  map[string]string
	Check Check

	hostname string // for the default ID once a discovered port is known
	ignored  []int  // ports SERVICE_<port>_IGNORE keeps out of discovery
}

// withPort returns s for a port found at run time, with its default ID.
func (s Service) withPort(port int) Service {
	s.Port = port
	if s.ID == "" {
		s.ID = DefaultID(s.hostname, s.Name, port)
	}
	return s
}

// DefaultID is the service ID used when SERVICE_ID does not set one.
func DefaultID(hostname, name string, port int) string {
	return fmt.Sprintf("%s-%s-%d", sanitizeHost(hostname), name, port)
}

// variable is the value of one SERVICE_* variable and the variable's own
// name, for errors.
type variable struct{ value, name string }

// Parse reads the registrator-style variables of environ (KEY=VALUE, as
// os.Environ returns it) and returns the services to register; none when no
// variable names the app. hostname makes default IDs unique per container.
//
// Every SERVICE_X variable may also be spelled MESHLET_SERVICE_X, which
// wins. Errors are one line and start with the variable's name.
func Parse(environ []string, hostname string) ([]Service, error) {
	vars := collect(environ)
	general := map[string]variable{}
	perPort := map[int]map[string]variable{}
	for _, key := range sortedKeys(vars) {
		v := vars[key]
		head, rest, ok := strings.Cut(key, "_")
		if !ok || !isDigits(head) {
			general[key] = v
			continue
		}
		port, err := parsePort(head)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.name, err)
		}
		if rest == "port" {
			return nil, fmt.Errorf("%s: a port's own variables cannot set its port", v.name)
		}
		if perPort[port] == nil {
			perPort[port] = map[string]variable{}
		}
		perPort[port][rest] = v
	}

	if !namesApp(general, perPort) {
		// A pure client sidecar; but settings that only make sense for a
		// registration mean the user forgot the name.
		for _, key := range sortedKeys(general) {
			if key == "id" || key == "tags" || key == "port" || strings.HasPrefix(key, "check_") {
				return nil, fmt.Errorf("%s: set, but no SERVICE_NAME names the app to register", general[key].name)
			}
		}
		for _, port := range sortedKeys(perPort) {
			for _, key := range sortedKeys(perPort[port]) {
				if key != "ignore" {
					return nil, fmt.Errorf("%s: set, but no SERVICE_NAME or SERVICE_%d_NAME names the app to register", perPort[port][key].name, port)
				}
			}
		}
		return nil, nil
	}
	if v, ok := general["ignore"]; ok && truthy(v.value) {
		return nil, nil
	}

	// The ports to register: SERVICE_PORT and those that variables of their
	// own mention, except ignored ones.
	origin := map[int]variable{} // the variable that brought each port in
	if v, ok := general["port"]; ok {
		port, err := parsePort(v.value)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", v.name, err)
		}
		origin[port] = v
	}
	for port, m := range perPort {
		if _, ok := origin[port]; ok {
			continue
		}
		for _, key := range sortedKeys(m) {
			if key != "ignore" {
				origin[port] = m[key]
				break
			}
		}
	}
	named := len(origin) > 0
	var ignored []int
	for _, port := range sortedKeys(perPort) {
		if v, ok := perPort[port]["ignore"]; ok && truthy(v.value) {
			delete(origin, port)
			ignored = append(ignored, port)
		}
	}
	if len(origin) == 0 {
		if named {
			return nil, nil // every named port is ignored
		}
		// Port 0: the registrar finds the one the app listens on.
		s, err := build(general, 0, hostname, false)
		if err != nil {
			return nil, err
		}
		s.ignored = ignored
		return []Service{s}, nil
	}

	var out []Service
	ids := map[string]string{} // ID → variable or port that made it
	for _, port := range sortedKeys(origin) {
		merged := map[string]variable{}
		for k, v := range general {
			if k != "port" && k != "ignore" {
				merged[k] = v
			}
		}
		for k, v := range perPort[port] {
			merged[k] = v
		}
		if _, ok := merged["name"]; !ok {
			return nil, fmt.Errorf("%s: port %d has no name: set SERVICE_NAME or SERVICE_%d_NAME", origin[port].name, port, port)
		}
		_, ownName := perPort[port]["name"]
		s, err := build(merged, port, hostname, len(origin) > 1 && !ownName)
		if err != nil {
			return nil, err
		}
		if other, dup := ids[s.ID]; dup {
			what := fmt.Sprintf("ports %s and %d", other, port)
			if v, ok := merged["id"]; ok {
				return nil, fmt.Errorf("%s: %s would both register as %q; use SERVICE_<port>_ID", v.name, what, s.ID)
			}
			return nil, fmt.Errorf("%s: %s would both register as %q; give them different names", merged["name"].name, what, s.ID)
		}
		ids[s.ID] = strconv.Itoa(port)
		out = append(out, s)
	}
	return out, nil
}

// collect gathers SERVICE_* and then MESHLET_SERVICE_* variables under their
// lower-cased key, so that the MESHLET_ spelling wins. Empty values count as
// unset, as in registrator.
func collect(environ []string) map[string]variable {
	vars := map[string]variable{}
	for _, prefix := range []string{"SERVICE_", "MESHLET_SERVICE_"} {
		for _, kv := range environ {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || v == "" || !strings.HasPrefix(k, prefix) || len(k) == len(prefix) {
				continue
			}
			vars[strings.ToLower(k[len(prefix):])] = variable{value: v, name: k}
		}
	}
	return vars
}

func namesApp(general map[string]variable, perPort map[int]map[string]variable) bool {
	if _, ok := general["name"]; ok {
		return true
	}
	for _, m := range perPort {
		if _, ok := m["name"]; ok {
			return true
		}
	}
	return false
}

// build makes the service of one port (0: to be discovered) from its
// variables. suffixPort appends "-PORT" to a shared name, as registrator
// does when one name covers several ports.
func build(vars map[string]variable, port int, hostname string, suffixPort bool) (Service, error) {
	s := Service{Port: port, hostname: hostname, Meta: map[string]string{}}
	var cs checkSettings
	for _, key := range sortedKeys(vars) {
		v := vars[key]
		var err error
		switch key {
		case "name":
			s.Name, err = parseName(v.value)
			if suffixPort {
				s.Name = fmt.Sprintf("%s-%d", s.Name, port)
			}
		case "id":
			s.ID, err = parseID(v.value)
		case "tags":
			s.Tags = parseTags(v.value)
		case "ignore", "port":
			// Decided by Parse.
		default:
			if strings.HasPrefix(key, "check_") {
				err = cs.set(key, v)
				break
			}
			err = setMeta(s.Meta, key, v.value)
		}
		if err != nil {
			return Service{}, fmt.Errorf("%s: %w", v.name, err)
		}
	}
	check, err := cs.check()
	if err != nil {
		return Service{}, err
	}
	s.Check = check
	if len(s.Meta) == 0 {
		s.Meta = nil
	}
	if s.ID == "" && port != 0 {
		s.ID = DefaultID(hostname, s.Name, port)
	}
	return s, nil
}

func parsePort(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (1-65535)", v)
	}
	return n, nil
}

// parseName accepts names that are one DNS label, so that callers can reach
// the service as NAME.local.
func parseName(v string) (string, error) {
	if !isDNSLabel(v) {
		return "", fmt.Errorf("%q is not a service name callers can resolve (letters, digits and '-', at most 63, not starting or ending with '-')", v)
	}
	return v, nil
}

func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && c != '-' {
			return false
		}
	}
	return true
}

// parseID accepts IDs that travel unescaped in Consul's URL paths.
func parseID(v string) (string, error) {
	if len(v) > 128 {
		return "", fmt.Errorf("service ID is longer than 128 characters")
	}
	for _, c := range []byte(v) {
		if !isIDChar(c) {
			return "", fmt.Errorf("%q is not a service ID (letters, digits and . _ - : @ ~)", v)
		}
	}
	return v, nil
}

func isIDChar(c byte) bool { return isAlnum(c) || strings.IndexByte("._-:@~", c) >= 0 }

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// sanitizeHost keeps a hostname usable inside an ID.
func sanitizeHost(h string) string {
	b := []byte(h)
	for i, c := range b {
		if !isAlnum(c) && c != '.' && c != '-' && c != '_' {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	if len(b) == 0 {
		return "meshlet"
	}
	return string(b)
}

func parseTags(v string) []string {
	var tags []string
	for _, t := range strings.Split(v, ",") {
		if t = strings.TrimSpace(t); t != "" && !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	return tags
}

// setMeta adds one attribute. Keys of meshlet's own per-service settings
// (SERVICE_MESHLET_STICKY → meshlet-sticky) take dashes, which environment
// variable names cannot hold.
func setMeta(meta map[string]string, key, value string) error {
	if strings.HasPrefix(key, "meshlet_") || strings.HasPrefix(key, "meshlet-") {
		key = strings.ReplaceAll(key, "_", "-")
	}
	switch {
	case len(key) > 128:
		return errors.New("meta key is longer than 128 characters")
	case strings.HasPrefix(key, "consul-"):
		return errors.New("meta keys starting with consul- are reserved by Consul")
	case len(value) > 512:
		return errors.New("meta value is longer than 512 characters")
	case len(meta) >= 64:
		return errors.New("more than 64 meta keys (Consul's limit)")
	}
	for _, c := range []byte(key) {
		if !isAlnum(c) && c != '_' && c != '-' {
			return fmt.Errorf("meta key %q may hold only letters, digits, '_' and '-'", key)
		}
	}
	meta[key] = value
	return nil
}

// truthy reads SERVICE_IGNORE-like values: registrator ignores on any
// non-empty value; an explicit false is honoured.
func truthy(v string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	return err != nil || b
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

func sortedKeys[K int | string, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
