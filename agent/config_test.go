package agent

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/upstream"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Consul:         "127.0.0.1:8500",
		Suffixes:       []string{"local", "service.consul"},
		VIPCIDR:        netip.MustParsePrefix("127.77.0.0/16"),
		DNSListen:      netip.MustParseAddrPort("127.0.0.1:15053"),
		OutboundListen: netip.MustParseAddrPort("127.0.0.1:15001"),
		AdminListen:    netip.MustParseAddrPort("127.0.0.1:15000"),
		ResolvConf:     "/etc/resolv.conf",
		Intercept:      true,
		Mark:           0x6d6c,
		ExcludeUID:     -1,
		DrainTimeout:   10 * time.Second,
		LogFormat:      "text",
		AdvertiseAddr:  "{{ GetPrivateIP }}",
		DrainPeriod:    5 * time.Second,
		ConnectTimeout: 2 * time.Second,
	}
	if c.Consul != want.Consul || strings.Join(c.Suffixes, ",") != strings.Join(want.Suffixes, ",") ||
		c.VIPCIDR != want.VIPCIDR || c.DNSListen != want.DNSListen || c.OutboundListen != want.OutboundListen ||
		c.AdminListen != want.AdminListen || c.ResolvConf != want.ResolvConf || c.Intercept != want.Intercept ||
		c.Mark != want.Mark || c.ExcludeUID != want.ExcludeUID || c.DrainTimeout != want.DrainTimeout || c.LogFormat != want.LogFormat ||
		c.AdvertiseAddr != want.AdvertiseAddr || c.DrainPeriod != want.DrainPeriod || c.ConnectTimeout != want.ConnectTimeout || c.Services != nil {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

func TestParseConfigTrafficSettings(t *testing.T) {
	c, err := ParseConfig(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.DNSTTL != 5*time.Second {
		t.Errorf("default DNS TTL %v, want 5s", c.DNSTTL)
	}
	if c.ConsulQuery != upstream.QueryDefault {
		t.Errorf("default consul query mode %q, want the default", c.ConsulQuery)
	}
	if c.StateDir != "/var/lib/meshlet" || c.MaxStale != 0 || c.StickyKey != "" || c.Policy.String() != "" {
		t.Errorf("defaults: state dir %q, max stale %v, sticky key %q, policy %q", c.StateDir, c.MaxStale, c.StickyKey, c.Policy)
	}
	c, err = ParseConfig([]string{"--policy", "web:sticky=cookie,sticky-cookie=CONTAINERID", "--state-dir", ""},
		env(map[string]string{
			"MESHLET_POLICY":       "api:balance=least-request",
			"MESHLET_STICKY_KEY":   "0123456789abcdef",
			"MESHLET_MAX_STALE":    "15m",
			"MESHLET_STATE_DIR":    "/elsewhere",
			"MESHLET_DNS_TTL":      "30s",
			"MESHLET_CONSUL_QUERY": "plain",
		}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Policy.String(); got != "web:sticky=cookie,sticky-cookie=CONTAINERID" {
		t.Errorf("policy = %q, want the flag's over the variable's", got)
	}
	if c.StickyKey != "0123456789abcdef" || c.MaxStale != 15*time.Minute || c.DNSTTL != 30*time.Second || c.ConsulQuery != upstream.QueryPlain {
		t.Errorf("sticky key %q, max stale %v; want the variables' values", c.StickyKey, c.MaxStale)
	}
	if c.StateDir != "" {
		t.Errorf("state dir = %q; an explicit empty flag turns saving off", c.StateDir)
	}
}

func TestParseConfigPrecedence(t *testing.T) {
	e := env(map[string]string{
		"CONSUL_HTTP_ADDR":  "consul.example:8500",
		"MESHLET_VIP_CIDR":  "127.88.0.0/16",
		"MESHLET_SUFFIX":    "Mesh., svc",
		"MESHLET_INTERCEPT": "false",
	})
	c, err := ParseConfig([]string{"--vip-cidr", "127.99.0.0/24"}, e, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Consul != "consul.example:8500" {
		t.Errorf("Consul = %q, want CONSUL_HTTP_ADDR's value", c.Consul)
	}
	if c.VIPCIDR != netip.MustParsePrefix("127.99.0.0/24") {
		t.Errorf("VIPCIDR = %s, want the flag's value over the variable's", c.VIPCIDR)
	}
	if got := strings.Join(c.Suffixes, ","); got != "mesh,svc" {
		t.Errorf("Suffixes = %q, want mesh,svc", got)
	}
	if c.Intercept {
		t.Error("Intercept = true, want false from MESHLET_INTERCEPT")
	}
	c, err = ParseConfig(nil, env(map[string]string{"CONSUL_HTTP_ADDR": "a:1", "MESHLET_CONSUL": "b:2"}), io.Discard)
	if err != nil || c.Consul != "b:2" {
		t.Errorf("MESHLET_CONSUL should win over CONSUL_HTTP_ADDR: %q, %v", c.Consul, err)
	}
}

func TestParseConfigErrorsNameTheSetting(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--vip-cidr", "10.0.0.0/33"}, nil, "--vip-cidr"},
		{[]string{"--vip-cidr", "10.0.0.0/16"}, nil, "not inside 127.0.0.0/8"},
		{[]string{"--vip-cidr", "127.0.0.0/8"}, nil, "contains --dns-listen"},
		{nil, map[string]string{"MESHLET_VIP_CIDR": "nope"}, "MESHLET_VIP_CIDR"},
		{[]string{"--dns-listen", "localhost:53"}, nil, "--dns-listen"},
		{[]string{"--outbound-listen", "127.0.0.1"}, nil, "--outbound-listen"},
		{[]string{"--admin-listen", ":x"}, nil, "--admin-listen"},
		{[]string{"--intercept", "maybe"}, nil, "--intercept"},
		{[]string{"--mark", "0x1ffffffff"}, nil, "--mark"},
		{[]string{"--mark", "0"}, nil, "--mark: 0 needs --exclude-uid"},
		{[]string{"--exclude-uid", "-5"}, nil, "--exclude-uid"},
		{[]string{"--drain-timeout", "soon"}, nil, "--drain-timeout"},
		{[]string{"--drain-period", "-1s"}, nil, "--drain-period"},
		{nil, map[string]string{"MESHLET_DRAIN_PERIOD": "a while"}, "MESHLET_DRAIN_PERIOD"},
		{[]string{"--advertise-addr", "{{ GetPrivateIP"}, nil, "--advertise-addr"},
		{nil, map[string]string{"MESHLET_ADVERTISE_ADDR": "{{ NoSuchFunc }}"}, "MESHLET_ADVERTISE_ADDR"},
		{[]string{"--log-level", "loud"}, nil, "--log-level"},
		{[]string{"--log-format", "xml"}, nil, "--log-format"},
		{[]string{"--suffix", ", ,"}, nil, "--suffix"},
		{[]string{"--dns-listen", "10.1.2.3:15053"}, nil, "must be a loopback"},
		{[]string{"--policy", "web:stiky=cookie"}, nil, `--policy: "web:stiky=cookie": unknown key "stiky"`},
		{nil, map[string]string{"MESHLET_POLICY": "sticky=cookie"}, "MESHLET_POLICY: \"sticky=cookie\": want SERVICE:KEY=VALUE"},
		{[]string{"--sticky-key", "short"}, nil, "--sticky-key: must be at least 16 characters"},
		{[]string{"--max-stale", "-1m"}, nil, "--max-stale"},
		{nil, map[string]string{"MESHLET_MAX_STALE": "long"}, "MESHLET_MAX_STALE"},
		{[]string{"extra"}, nil, "unexpected argument"},
		{[]string{"--dns-ttl", "1500ms"}, nil, "--dns-ttl"},
		{[]string{"--dns-ttl", "0s"}, nil, "--dns-ttl"},
		{nil, map[string]string{"MESHLET_DNS_TTL": "2h"}, "MESHLET_DNS_TTL"},
		{[]string{"--consul-query", "streaming"}, nil, `--consul-query: consul query mode "streaming": want default, plain, cached or stale`},
	}
	for _, tt := range tests {
		_, err := ParseConfig(tt.args, env(tt.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v %v: error %v, want it to mention %q", tt.args, tt.env, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: error is not one line: %q", tt.args, err)
		}
	}
	// --mark 0 is fine with --exclude-uid, and anything goes without interception.
	if _, err := ParseConfig([]string{"--mark", "0", "--exclude-uid", "1000"}, env(nil), io.Discard); err != nil {
		t.Errorf("--mark 0 --exclude-uid 1000: %v", err)
	}
	if _, err := ParseConfig([]string{"--mark", "0", "--intercept=false"}, env(nil), io.Discard); err != nil {
		t.Errorf("--mark 0 --intercept=false: %v", err)
	}
}

func TestLoadRegistration(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string // flag variables
		environ []string          // the process environment
		wantErr string            // prefix; "" for success
		wantN   int
		wantIP  string
	}{
		{name: "no SERVICE_* variables: nothing to register, the address is not evaluated",
			env: map[string]string{"MESHLET_ADVERTISE_ADDR": `{{ GetInterfaceIP "nosuch0" }}`}},
		{name: "registers with a literal address", args: []string{"--advertise-addr", "10.9.8.7"},
			environ: []string{"SERVICE_NAME=web", "SERVICE_PORT=8080"}, wantN: 1, wantIP: "10.9.8.7"},
		{name: "a template that matches nothing names the variable",
			env:     map[string]string{"MESHLET_ADVERTISE_ADDR": `{{ GetInterfaceIP "nosuch0" }}`},
			environ: []string{"SERVICE_NAME=web"}, wantErr: "MESHLET_ADVERTISE_ADDR: "},
		{name: "or the flag", args: []string{"--advertise-addr", `{{ GetInterfaceIP "nosuch0" }}`},
			environ: []string{"SERVICE_NAME=web"}, wantErr: "--advertise-addr: "},
		{name: "bad SERVICE_* values name their variable", args: []string{"--advertise-addr", "10.0.0.1"},
			environ: []string{"SERVICE_NAME=web", "SERVICE_CHECK_INTERVAL=soon"}, wantErr: "SERVICE_CHECK_INTERVAL: "},
	}
	for _, tt := range tests {
		c, err := ParseConfig(tt.args, env(tt.env), io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		err = c.LoadRegistration(tt.environ, "box")
		if tt.wantErr != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: error %v, want one line starting with %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if len(c.Services) != tt.wantN || (tt.wantIP != "" && c.Advertise.String() != tt.wantIP) {
			t.Errorf("%s: %d services at %v; want %d at %s", tt.name, len(c.Services), c.Advertise, tt.wantN, tt.wantIP)
		}
	}
}

func TestParseConfigExitWhenAppGone(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want bool
		err  string
	}{
		{nil, nil, true, ""},
		{nil, map[string]string{"MESHLET_EXIT_WHEN_APP_GONE": "false"}, false, ""},
		{[]string{"--exit-when-app-gone=true"}, map[string]string{"MESHLET_EXIT_WHEN_APP_GONE": "false"}, true, ""},
		{[]string{"--exit-when-app-gone", "maybe"}, nil, false, "--exit-when-app-gone"},
	} {
		c, err := ParseConfig(tt.args, env(tt.env), io.Discard)
		if tt.err != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tt.err) {
				t.Errorf("%v %v: err %v; want one naming %s", tt.args, tt.env, err, tt.err)
			}
			continue
		}
		if err != nil || c.ExitWhenAppGone != tt.want {
			t.Errorf("%v %v: %v, %v; want %v", tt.args, tt.env, c.ExitWhenAppGone, err, tt.want)
		}
	}
}
