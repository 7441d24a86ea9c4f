package dns

import (
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

// testSuffixes are sorted longest first, as NewServer sorts them; "consul"
// is there to show that the longer "service.consul" wins.
var testSuffixes = []string{"service.consul", "consul", "local"}

func TestClassifyName(t *testing.T) {
	tests := []struct {
		name    string
		kind    nameKind
		suffix  string
		service string
	}{
		{"web.local.", meshService, "local", "web"},
		{"web.local", meshService, "local", "web"},
		{"WEB.LoCaL.", meshService, "local", "web"},
		{"my-svc_2.local.", meshService, "local", "my-svc_2"},
		{"web.service.consul.", meshService, "service.consul", "web"},
		{"web.consul.", meshService, "consul", "web"},
		{"service.consul.", meshApex, "service.consul", ""},
		{"LOCAL.", meshApex, "local", ""},
		{"local", meshApex, "local", ""},
		{"a.web.local.", meshService, "local", "a.web"},
		{"V2.Web.local.", meshService, "local", "v2.web"},
		{"a.web.service.consul.", meshService, "service.consul", "a.web"},
		{"b.a.web.local.", meshNoName, "local", ""},
		{"_web._tcp.local.", meshSRVName, "local", "web"},
		{"_Web._UDP.service.consul.", meshSRVName, "service.consul", "web"},
		{"_web._v2.local.", meshSRVName, "local", "v2.web"},
		{"_._tcp.local.", meshService, "local", "_._tcp"},
		{"a..local.", meshNoName, "local", ""},
		{"a\\.b.web.local.", meshNoName, "local", ""},
		{"we\\ b.local.", meshNoName, "local", ""},
		{"we\\000b.local.", meshNoName, "local", ""},
		{"a\\\\.local.", meshNoName, "local", ""},
		{strings.Repeat("a", 64) + ".local.", meshNoName, "local", ""},
		{".local.", meshNoName, "local", ""},
		{"web\\.local.", notMesh, "", ""},
		{"weblocal.", notMesh, "", ""},
		{"web.local.example.org.", notMesh, "", ""},
		{"example.org.", notMesh, "", ""},
		{"local.\\.", notMesh, "", ""},
		{".", notMesh, "", ""},
		{"", notMesh, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kind, i, service := classifyName(tc.name, testSuffixes)
			suffix := ""
			if i >= 0 {
				suffix = testSuffixes[i]
			}
			if kind != tc.kind || suffix != tc.suffix || service != tc.service {
				t.Errorf("classifyName(%q) = %v, %q, %q; want %v, %q, %q",
					tc.name, kind, suffix, service, tc.kind, tc.suffix, tc.service)
			}
		})
	}
}

func TestClassifyNameDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() { classifyName("web.service.consul.", testSuffixes) })
	if allocs != 0 {
		t.Errorf("classifyName of a lower-case mesh name: %v allocations, want 0", allocs)
	}
}

// FuzzClassifyName checks classifyName against a slow reference built on
// miekg's own label splitting, for every name miekg considers valid.
func FuzzClassifyName(f *testing.F) {
	for _, s := range []string{"web.local.", "WEB.Local", "a.web.service.consul.", "service.consul.",
		"web\\.local.", "a\\\\.local.", "we\\000b.local.", "example.org.", ".", "", "..local."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		kind, i, service := classifyName(name, testSuffixes)
		if kind == notMesh && (i != -1 || service != "") {
			t.Fatalf("notMesh with suffix %d service %q", i, service)
		}
		if kind == meshService || kind == meshSRVName {
			first, second, subset := strings.Cut(service, ".")
			if service != strings.ToLower(service) || !isServiceLabel(first) || subset && !isServiceLabel(second) {
				t.Fatalf("service %q is not a lower-case label or tag.label", service)
			}
		}
		if _, ok := mdns.IsDomainName(name); !ok || strings.Contains(name, "\\") || name == "" {
			return // the reference below only understands plain names
		}
		wantKind, wantSuffix, wantService := referenceClassify(name)
		gotSuffix := ""
		if i >= 0 {
			gotSuffix = testSuffixes[i]
		}
		if kind != wantKind || gotSuffix != wantSuffix || service != wantService {
			t.Fatalf("classifyName(%q) = %v, %q, %q; reference says %v, %q, %q",
				name, kind, gotSuffix, service, wantKind, wantSuffix, wantService)
		}
	})
}

func referenceClassify(name string) (nameKind, string, string) {
	labels := mdns.SplitDomainName(strings.ToLower(name))
	for _, sfx := range testSuffixes {
		sl := strings.Split(sfx, ".")
		if len(labels) < len(sl) || strings.Join(labels[len(labels)-len(sl):], ".") != sfx {
			continue
		}
		before := labels[:len(labels)-len(sl)]
		switch {
		case len(before) == 0:
			return meshApex, sfx, ""
		case len(before) == 1 && isServiceLabel(before[0]):
			return meshService, sfx, before[0]
		case len(before) == 2 && isServiceLabel(before[0]) && isServiceLabel(before[1]):
			a, b := before[0], before[1]
			if len(a) > 1 && a[0] == '_' && len(b) > 1 && b[0] == '_' {
				if b == "_tcp" || b == "_udp" {
					return meshSRVName, sfx, a[1:]
				}
				return meshSRVName, sfx, b[1:] + "." + a[1:]
			}
			return meshService, sfx, a + "." + b
		default:
			return meshNoName, sfx, ""
		}
	}
	return notMesh, "", ""
}
