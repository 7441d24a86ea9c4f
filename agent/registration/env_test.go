package registration

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	defaultCheck := Check{Probe: ProbeTCP, Interval: 5 * time.Second, Timeout: 2 * time.Second,
		SuccessThreshold: 1, FailureThreshold: 3, TTL: 21 * time.Second, DeregisterAfter: time.Minute}
	withCheck := func(f func(*Check)) Check {
		c := defaultCheck
		f(&c)
		return c
	}
	tests := []struct {
		name string
		env  []string
		want []Service
	}{
		{"nothing: a pure client sidecar", nil, nil},
		{"unrelated variables", []string{"PATH=/bin", "SERVICEX=1", "SERVICE_=x", "MESHLET_SUFFIX=local"}, nil},
		{"attributes without a name register nothing", []string{"SERVICE_VERSION=2", "SERVICE_IGNORE=1"}, nil},
		{"name only: port discovered, default TCP probe",
			[]string{"SERVICE_NAME=web"},
			[]Service{{Name: "web", Check: defaultCheck}}},
		{"port given: ID from hostname, name and port",
			[]string{"SERVICE_NAME=web", "SERVICE_PORT=8080"},
			[]Service{{ID: "box1-web-8080", Name: "web", Port: 8080, Check: defaultCheck}}},
		{"explicit ID, tags deduplicated, attributes to meta",
			[]string{"SERVICE_NAME=web", "SERVICE_PORT=80", "SERVICE_ID=web-a", "SERVICE_TAGS= v1, blue,,v1", "SERVICE_VERSION=1.2", "SERVICE_REGION=eu-west"},
			[]Service{{ID: "web-a", Name: "web", Port: 80, Tags: []string{"v1", "blue"},
				Meta: map[string]string{"version": "1.2", "region": "eu-west"}, Check: defaultCheck}}},
		{"meshlet's own settings take dashes",
			[]string{"SERVICE_NAME=web", "SERVICE_PORT=80", "SERVICE_MESHLET_STICKY=cookie", "SERVICE_MESHLET_STICKY_COOKIE=CONTAINERID"},
			[]Service{{ID: "box1-web-80", Name: "web", Port: 80,
				Meta: map[string]string{"meshlet-sticky": "cookie", "meshlet-sticky-cookie": "CONTAINERID"}, Check: defaultCheck}}},
		{"MESHLET_SERVICE_ wins over SERVICE_",
			[]string{"MESHLET_SERVICE_NAME=api", "SERVICE_NAME=web", "SERVICE_PORT=1", "MESHLET_SERVICE_PORT=2"},
			[]Service{{ID: "box1-api-2", Name: "api", Port: 2, Check: defaultCheck}}},
		{"HTTP probe and its settings",
			[]string{"SERVICE_NAME=web", "SERVICE_PORT=80", "SERVICE_CHECK_HTTP=/health?full=1", "SERVICE_CHECK_INTERVAL=1s",
				"SERVICE_CHECK_TIMEOUT=500ms", "SERVICE_CHECK_INITIAL_DELAY=3s", "SERVICE_CHECK_SUCCESS_THRESHOLD=2",
				"SERVICE_CHECK_FAILURE_THRESHOLD=5", "SERVICE_CHECK_DEREGISTER_AFTER=90s"},
			[]Service{{ID: "box1-web-80", Name: "web", Port: 80, Check: Check{Probe: ProbeHTTP, HTTPPath: "/health?full=1",
				InitialDelay: 3 * time.Second, Interval: time.Second, Timeout: 500 * time.Millisecond,
				SuccessThreshold: 2, FailureThreshold: 5, TTL: 5 * time.Second, DeregisterAfter: 90 * time.Second}}}},
		{"explicit TTL; no probe",
			[]string{"SERVICE_NAME=web", "SERVICE_PORT=80", "SERVICE_CHECK_TCP=false", "SERVICE_CHECK_TTL=1m", "SERVICE_CHECK_DEREGISTER_AFTER=0s"},
			[]Service{{ID: "box1-web-80", Name: "web", Port: 80, Check: withCheck(func(c *Check) {
				c.Probe, c.TTL, c.DeregisterAfter = ProbeNone, time.Minute, 0
			})}}},
		{"two ports under one name get -PORT; a port's own name does not",
			[]string{"SERVICE_NAME=web", "SERVICE_80_TAGS=plain", "SERVICE_443_NAME=secure", "SERVICE_443_CHECK_HTTP=/h", "SERVICE_TAGS=all"},
			[]Service{
				{ID: "box1-web-80-80", Name: "web-80", Port: 80, Tags: []string{"plain"}, Check: defaultCheck},
				{ID: "box1-secure-443", Name: "secure", Port: 443, Tags: []string{"all"}, Check: withCheck(func(c *Check) {
					c.Probe, c.HTTPPath = ProbeHTTP, "/h"
				})},
			}},
		{"SERVICE_PORT and a port of its own",
			[]string{"SERVICE_NAME=web", "SERVICE_PORT=8080", "SERVICE_9090_NAME=metrics", "SERVICE_9090_ID=m1"},
			[]Service{
				{ID: "box1-web-8080-8080", Name: "web-8080", Port: 8080, Check: defaultCheck},
				{ID: "m1", Name: "metrics", Port: 9090, Check: defaultCheck},
			}},
		{"SERVICE_IGNORE", []string{"SERVICE_NAME=web", "SERVICE_IGNORE=true"}, nil},
		{"SERVICE_IGNORE=false is honoured",
			[]string{"SERVICE_NAME=web", "SERVICE_IGNORE=false", "SERVICE_PORT=80"},
			[]Service{{ID: "box1-web-80", Name: "web", Port: 80, Check: defaultCheck}}},
		{"an ignored port is left out", []string{"SERVICE_NAME=web", "SERVICE_PORT=80", "SERVICE_80_IGNORE=yes"}, nil},
		{"an ignored port is kept out of discovery",
			[]string{"SERVICE_NAME=web", "SERVICE_9090_IGNORE=1"},
			[]Service{{Name: "web", Check: defaultCheck, ignored: []int{9090}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.env, "box1")
			if err != nil {
				t.Fatal(err)
			}
			for i := range got {
				got[i].hostname = ""
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseErrorsNameTheVariable(t *testing.T) {
	tests := []struct {
		env  []string
		want string // the error starts with it
	}{
		{[]string{"SERVICE_NAME=web", "SERVICE_PORT=http"}, `SERVICE_PORT: "http" is not a port number`},
		{[]string{"SERVICE_NAME=web", "MESHLET_SERVICE_PORT=70000"}, "MESHLET_SERVICE_PORT: "},
		{[]string{"SERVICE_99999_NAME=web"}, "SERVICE_99999_NAME: "},
		{[]string{"SERVICE_0_NAME=web"}, "SERVICE_0_NAME: "},
		{[]string{"SERVICE_NAME=web_1"}, "SERVICE_NAME: "},
		{[]string{"SERVICE_NAME=-web"}, "SERVICE_NAME: "},
		{[]string{"SERVICE_NAME=" + strings.Repeat("a", 64)}, "SERVICE_NAME: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_INTERVAL=soon"}, `SERVICE_CHECK_INTERVAL: "soon" is not a positive duration`},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_INTERVAL=0s"}, "SERVICE_CHECK_INTERVAL: "},
		{[]string{"SERVICE_NAME=web", "MESHLET_SERVICE_CHECK_TIMEOUT=-1s"}, "MESHLET_SERVICE_CHECK_TIMEOUT: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_INITIAL_DELAY=later"}, "SERVICE_CHECK_INITIAL_DELAY: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_SUCCESS_THRESHOLD=0"}, "SERVICE_CHECK_SUCCESS_THRESHOLD: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_FAILURE_THRESHOLD=many"}, "SERVICE_CHECK_FAILURE_THRESHOLD: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=health"}, "SERVICE_CHECK_HTTP: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_HTTP=http://x/health"}, "SERVICE_CHECK_HTTP: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_TCP=maybe"}, "SERVICE_CHECK_TCP: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_TCP=true", "SERVICE_CHECK_HTTP=/h"}, "SERVICE_CHECK_TCP: true, and SERVICE_CHECK_HTTP"},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_TTL=6s"}, "SERVICE_CHECK_TTL: 6s must exceed"},
		{[]string{"SERVICE_NAME=web", "SERVICE_80_CHECK_TTL=1s", "SERVICE_80_CHECK_INTERVAL=1s"}, "SERVICE_80_CHECK_TTL: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_CHECK_SCRIPT=/bin/true"}, "SERVICE_CHECK_SCRIPT: not supported"},
		{[]string{"SERVICE_NAME=web", "SERVICE_ID=a/b"}, "SERVICE_ID: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_ID=one", "SERVICE_80_TAGS=x", "SERVICE_81_TAGS=y"}, "SERVICE_ID: ports 80 and 81"},
		{[]string{"SERVICE_NAME=web", "SERVICE_CONSUL-X=1"}, "SERVICE_CONSUL-X: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_A.B=1"}, "SERVICE_A.B: "},
		{[]string{"SERVICE_NAME=web", "SERVICE_80_PORT=81"}, "SERVICE_80_PORT: "},
		{[]string{"SERVICE_CHECK_HTTP=/health"}, "SERVICE_CHECK_HTTP: set, but no SERVICE_NAME"},
		{[]string{"SERVICE_80_TAGS=x"}, "SERVICE_80_TAGS: set, but no SERVICE_NAME"},
		{[]string{"SERVICE_80_TAGS=x", "SERVICE_90_NAME=m"}, "SERVICE_80_TAGS: port 80 has no name"},
	}
	for _, tt := range tests {
		_, err := Parse(tt.env, "box1")
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want it to start with %q", tt.env, err, tt.want)
			continue
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error is not one line: %q", tt.env, err)
		}
	}
}

func TestDefaultIDIsUsableInConsulPaths(t *testing.T) {
	for _, host := range []string{"", "a/b c", "3f2a9c1e8d7b", strings.Repeat("h", 100)} {
		id := DefaultID(host, "web", 8080)
		if _, err := parseID(id); err != nil {
			t.Errorf("DefaultID(%q) = %q: %v", host, id, err)
		}
	}
	if a, b := DefaultID("c1", "web", 80), DefaultID("c2", "web", 80); a == b {
		t.Errorf("two containers share the ID %q", a)
	}
}

// FuzzParse feeds arbitrary environments (one variable per line): Parse
// must not panic, its errors must be one line starting with the variable at
// fault, and what it accepts must be registrable.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		"SERVICE_NAME=web",
		"SERVICE_NAME=web\nSERVICE_PORT=8080\nSERVICE_TAGS=a,b\nSERVICE_VERSION=1",
		"SERVICE_NAME=web\nSERVICE_80_NAME=x\nSERVICE_443_TAGS=t\nSERVICE_ID=i",
		"MESHLET_SERVICE_NAME=a\nSERVICE_CHECK_HTTP=/h\nSERVICE_CHECK_INTERVAL=1s\nSERVICE_CHECK_TTL=3s",
		"SERVICE_NAME=web\nSERVICE_IGNORE=0\nSERVICE_8080_IGNORE=1",
		"SERVICE_1_NAME=a\nSERVICE_01_NAME=b",
		"SERVICE_NAME=web\nSERVICE_MESHLET_STICKY=cookie",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data string) {
		env := strings.Split(data, "\n")
		services, err := Parse(env, "host")
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Fatalf("error is not one line: %q", msg)
			}
			name, _, _ := strings.Cut(msg, ": ")
			if !strings.HasPrefix(name, "SERVICE_") && !strings.HasPrefix(name, "MESHLET_SERVICE_") {
				t.Fatalf("error does not start with a variable: %q", msg)
			}
			return
		}
		ids := map[string]bool{}
		for _, s := range services {
			if !isDNSLabel(s.Name) {
				t.Fatalf("accepted name %q", s.Name)
			}
			if s.Port < 0 || s.Port > 65535 || (s.Port == 0 && len(services) != 1) || (s.Port != 0 && s.ID == "") {
				t.Fatalf("port %d with ID %q among %d services", s.Port, s.ID, len(services))
			}
			id := s.withPort(max(s.Port, 1)).ID
			if _, err := parseID(id); err != nil || ids[id] {
				t.Fatalf("ID %q: err %v, duplicate %v", id, err, ids[id])
			}
			ids[id] = true
			if s.Check.TTL <= s.Check.Interval+s.Check.Timeout || s.Check.Interval <= 0 || s.Check.Timeout <= 0 {
				t.Fatalf("check %+v", s.Check)
			}
			if len(s.Meta) > 64 {
				t.Fatalf("%d meta keys", len(s.Meta))
			}
			for k := range s.Meta {
				if err := setMeta(map[string]string{}, k, ""); err != nil || k != strings.ToLower(k) {
					t.Fatalf("meta key %q: %v", k, err)
				}
			}
		}
	})
}
