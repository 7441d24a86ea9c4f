package inject

import (
	"context"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// meshed injects src and returns the sidecar environment of service sc and
// the report.
func meshed(t *testing.T, src, sc string, opt Options) (map[string]string, string) {
	t.Helper()
	res, err := Inject(context.Background(), []byte(src), opt)
	if err != nil {
		t.Fatalf("inject: %v", err)
	}
	var f struct {
		Services map[string]map[string]any
	}
	if err := yaml.Unmarshal(res.Output, &f); err != nil {
		t.Fatalf("reading the output: %v\n%s", err, res.Output)
	}
	var report []string
	for _, n := range res.Notes {
		report = append(report, n.String())
	}
	s, ok := f.Services[sc]
	if !ok {
		t.Fatalf("no service %s in:\n%s", sc, res.Output)
	}
	env := map[string]string{}
	m, _ := s["environment"].(map[string]any)
	for k, v := range m {
		env[k], _ = v.(string)
	}
	return env, strings.Join(report, "\n")
}

func TestTranslate(t *testing.T) {
	for _, tc := range []struct {
		name, src, sidecar string
		want               map[string]string // sidecar environment (CONSUL_HTTP_ADDR included)
		report             []string          // substrings the report must hold
	}{
		{
			name:    "expose registers the one port",
			src:     "services:\n  web:\n    image: x\n    expose: [\"8080/tcp\"]\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "web", "SERVICE_PORT": "8080"},
		},
		{
			name:    "long-form and published ports; udp does not count",
			src:     "services:\n  dns_cache:\n    image: x\n    ports:\n      - target: 5353\n        protocol: udp\n      - \"127.0.0.1:8053:53\"\n",
			sidecar: "dns_cache-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "dns-cache", "SERVICE_PORT": "53"},
		},
		{
			name:    "several ports: the app's one listener is discovered",
			src:     "services:\n  web:\n    image: x\n    expose: [80, 443]\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "web"},
			report:  []string{"listens on ports [80 443]"},
		},
		{
			name:    "no port: client only",
			src:     "services:\n  job:\n    image: x\n",
			sidecar: "job-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500"},
			report:  []string{"client only"},
		},
		{
			name: "routing name other than the service's, public route reported, tcp probe",
			src: "services:\n  backend:\n    image: x\n    labels:\n      aliyun.routing.port_8080: 'http://api.example.com;api.local'\n" +
				"      aliyun.probe.url: tcp://container:8080\n",
			sidecar: "backend-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "api", "SERVICE_PORT": "8080", "SERVICE_CHECK_TCP": "true"},
			report:  []string{`NOT TRANSLATED: aliyun.routing.port_8080: route "http://api.example.com"`},
		},
		{
			name:    "a probe of another port is not translated",
			src:     "services:\n  web:\n    image: x\n    labels:\n      aliyun.routing.port_80: web.local\n      aliyun.probe.url: http://container:9000/health\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "web", "SERVICE_PORT": "80"},
			report:  []string{"NOT TRANSLATED: aliyun.probe.url: port 9000 is not the routed port [80]"},
		},
		{
			name:    "a probe alone gives the port; https and cmd probes are not translated",
			src:     "services:\n  web:\n    image: x\n    labels:\n      aliyun.probe.url: http://container/license.txt?x=1\n      aliyun.probe.cmd: /bin/true\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "web", "SERVICE_PORT": "80", "SERVICE_CHECK_HTTP": "/license.txt?x=1"},
			report:  []string{"NOT TRANSLATED: label aliyun.probe.cmd"},
		},
		{
			name:    "two routed ports register both",
			src:     "services:\n  web:\n    image: x\n    labels:\n      - aliyun.routing.port_80=web.local\n      - aliyun.routing.port_9090=metrics.local\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_80_NAME": "web", "SERVICE_9090_NAME": "metrics"},
		},
		{
			name: "registrator variables from labels and a list environment; theirs win over translated ones",
			src: "services:\n  web:\n    image: x\n    labels:\n      aliyun.routing.port_80: web.local\n      SERVICE_TAGS: a,b\n" +
				"    environment:\n      - SERVICE_NAME=www\n      - SERVICE_CHECK_DOCKER=true\n      - PLAIN=1\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "www", "SERVICE_PORT": "80", "SERVICE_TAGS": "a,b"},
			report:  []string{"SERVICE_NAME=www overrides", "NOT TRANSLATED: environment SERVICE_CHECK_DOCKER"},
		},
		{
			name:    "a value the sidecar would refuse is reported",
			src:     "services:\n  web:\n    image: x\n    environment:\n      SERVICE_NAME: web\n      SERVICE_CHECK_INTERVAL: soon\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "consul:8500", "SERVICE_NAME": "web", "SERVICE_CHECK_INTERVAL": "soon"},
			report:  []string{`NOT TRANSLATED: the sidecar would refuse to start: SERVICE_CHECK_INTERVAL: "soon" is not a positive duration`},
		},
		{
			name:    "--consul points at an existing Consul",
			src:     "services:\n  web:\n    image: x\n",
			sidecar: "web-meshlet",
			want:    map[string]string{"CONSUL_HTTP_ADDR": "10.0.0.2:8500"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt := Options{}
			if strings.HasPrefix(tc.name, "--consul") {
				opt.Consul = "10.0.0.2:8500"
			}
			env, report := meshed(t, tc.src, tc.sidecar, opt)
			if len(env) != len(tc.want) {
				t.Errorf("environment %v, want %v", env, tc.want)
			}
			for k, v := range tc.want {
				if env[k] != v {
					t.Errorf("%s=%q, want %q (environment %v)", k, env[k], v, env)
				}
			}
			for _, s := range tc.report {
				if !strings.Contains(report, s) {
					t.Errorf("report lacks %q:\n%s", s, report)
				}
			}
		})
	}
}

// A shared environment anchor keeps its other users' variables: the app
// gets a copy without the moved ones.
func TestSharedEnvironment(t *testing.T) {
	src := `x-env: &env
  SERVICE_NAME: web
  LOG: debug
services:
  web:
    image: x
    environment: *env
  other:
    image: y
    network_mode: host
    environment: *env
`
	res, err := Inject(context.Background(), []byte(src), Options{Consul: "c:8500"})
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		X        map[string]string `yaml:"x-env"`
		Services map[string]struct{ Environment map[string]string }
	}
	if err := yaml.Unmarshal(res.Output, &f); err != nil {
		t.Fatal(err)
	}
	if f.X["SERVICE_NAME"] != "web" || f.Services["other"].Environment["SERVICE_NAME"] != "web" {
		t.Errorf("the anchor changed: %v", f.X)
	}
	if got := f.Services["web"].Environment; got["SERVICE_NAME"] != "" || got["LOG"] != "debug" {
		t.Errorf("web's environment %v; want LOG only", got)
	}
	if got := f.Services["web-meshlet"].Environment["SERVICE_NAME"]; got != "web" {
		t.Errorf("sidecar SERVICE_NAME %q", got)
	}
}

func TestErrors(t *testing.T) {
	for src, want := range map[string]string{
		"- a\n- b\n":                   "the top level must be a mapping",
		"services:\n  web: [a]\n":      "line 2: service web is not a mapping",
		"services:\n  web:\n  image\n": "compose.yaml: yaml: line 3",
		"version: '3'\n":               "no services",
	} {
		_, err := Inject(context.Background(), []byte(src), Options{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want %q", src, err, want)
		}
	}
}

func TestPathLine(t *testing.T) {
	src := "services:\n  web:\n    labels:\n      aliyun.routing.port_80: web.local\n    ports:\n      - \"80\"\n      - 90\n"
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"services.web": 2,
		"services.web.labels.aliyun.routing.port_80": 4,
		"services.web.ports.1":                       7,
		"services.web.nothing":                       2,
	} {
		if got := pathLine(doc.Content[0], path); got != want {
			t.Errorf("%s: line %d, want %d", path, got, want)
		}
	}
}

// Whatever the input, inject does not panic, and what it writes it leaves
// alone the second time.
func FuzzInject(f *testing.F) {
	for _, s := range []string{
		"services:\n  web:\n    image: x\n    expose: [80]\n    scale: 2\n",
		"web:\n  image: x\n  labels:\n    aliyun.scale: '3'\n    aliyun.routing.port_80: web.local\n",
		"services:\n  a: {image: x, deploy: {replicas: 2}, environment: [SERVICE_NAME=a]}\n  b: {image: y, depends_on: [a]}\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		res, err := Inject(context.Background(), []byte(src), Options{})
		if err != nil || !res.Changed {
			return
		}
		again, err := Inject(context.Background(), res.Output, Options{})
		if err != nil {
			t.Fatalf("the output does not inject: %v\n%s", err, res.Output)
		}
		if again.Changed {
			t.Fatalf("the output changed again: %v\n%s", again.Notes, res.Output)
		}
	})
}
