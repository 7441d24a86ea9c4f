package upstream

import (
	"strings"
	"testing"
	"time"
)

func TestDerivePolicyFromMeta(t *testing.T) {
	sticky := map[string]string{"meshlet-sticky": "cookie", "meshlet-sticky-cookie": "CONTAINERID", "meshlet-sticky-max-age": "1h"}
	plain := map[string]string{}
	for _, tc := range []struct {
		name   string
		metas  []map[string]string
		ov     string
		check  func(p Policy) bool
		issues int
	}{
		{"defaults", nil, "", func(p Policy) bool {
			return !p.Sticky && p.CookieName == "meshlet-web" && p.Balance == BalanceRoundRobin && p.Retries == 2 &&
				p.RetryBudget == 0.2 && p.RetryMinPerSec == 5 && p.EjectAfter == 5 && p.EjectTime == 10*time.Second &&
				p.EjectMaxShare == 0.5 && !p.Panic && !p.Eject5xx && p.Timeout == 0 && p.TryTimeout == 0
		}, 0},
		{"all instances agree", []map[string]string{sticky, sticky}, "", func(p Policy) bool {
			return p.Sticky && p.CookieName == "CONTAINERID" && p.CookieMaxAge == time.Hour
		}, 0},
		{"majority wins over a minority", []map[string]string{sticky, sticky, plain}, "", func(p Policy) bool { return p.Sticky }, 0},
		{"absent is a vote for the default", []map[string]string{sticky, plain, plain}, "", func(p Policy) bool { return !p.Sticky }, 0},
		{"a tie goes to the first instance", []map[string]string{plain, sticky}, "", func(p Policy) bool { return !p.Sticky }, 0},
		{"a tie goes to the first instance, other way", []map[string]string{sticky, plain}, "", func(p Policy) bool { return p.Sticky }, 0},
		{"every key", []map[string]string{{
			"meshlet-balance": "least-request", "meshlet-retries": "0", "meshlet-timeout": "1500ms",
			"meshlet-try-timeout": "2", "meshlet-retry-budget": "50%", "meshlet-retry-min": "1/s",
			"meshlet-eject-after": "3", "meshlet-eject-5xx": "true", "meshlet-eject-time": "30s",
			"meshlet-eject-max": "34", "meshlet-panic": "true",
		}}, "", func(p Policy) bool {
			return p.Balance == BalanceLeastRequest && p.Retries == 0 && p.Timeout == 1500*time.Millisecond &&
				p.TryTimeout == 2*time.Second && p.RetryBudget == 0.5 && p.RetryMinPerSec == 1 && p.EjectAfter == 3 &&
				p.Eject5xx && p.EjectTime == 30*time.Second && p.EjectMaxShare == 0.34 && p.Panic
		}, 0},
		{"invalid values are ignored and reported", []map[string]string{{"meshlet-balance": "random", "meshlet-retries": "-1", "meshlet-sticky-cookie": "a b"}},
			"", func(p Policy) bool {
				return p.Balance == BalanceRoundRobin && p.Retries == 2 && p.CookieName == "meshlet-web"
			}, 3},
		{"other meta is not ours", []map[string]string{{"sticky": "cookie", "version": "2"}}, "", func(p Policy) bool { return !p.Sticky }, 0},
		{"a service override beats the meta", []map[string]string{sticky}, "web:sticky=none", func(p Policy) bool {
			return !p.Sticky && p.CookieName == "CONTAINERID"
		}, 0},
		{"the meta beats a * override", []map[string]string{{"meshlet-balance": "round-robin"}}, "*:balance=least-request,retries=1",
			func(p Policy) bool { return p.Balance == BalanceRoundRobin && p.Retries == 1 }, 0},
		{"a * override stands in for missing meta", nil, "*:sticky=cookie", func(p Policy) bool { return p.Sticky }, 0},
		{"overrides of another service do not apply", []map[string]string{sticky}, "api:sticky=none", func(p Policy) bool { return p.Sticky }, 0},
		{"no protocol hint", nil, "", func(p Policy) bool { return p.Protocol == "" && !p.SpeaksHTTP2() }, 0},
		{"protocol grpc speaks HTTP/2", []map[string]string{{"meshlet-protocol": "GRPC"}}, "", func(p Policy) bool {
			return p.Protocol == ProtocolGRPC && p.SpeaksHTTP2()
		}, 0},
		{"protocol http2 speaks HTTP/2", []map[string]string{{"meshlet-protocol": "http2"}}, "", func(p Policy) bool { return p.SpeaksHTTP2() }, 0},
		{"protocol tcp", []map[string]string{{"meshlet-protocol": "tcp"}}, "", func(p Policy) bool {
			return p.Protocol == ProtocolTCP && !p.SpeaksHTTP2()
		}, 0},
		{"an override auto undoes the meta's hint", []map[string]string{{"meshlet-protocol": "tcp"}}, "web:protocol=auto", func(p Policy) bool { return p.Protocol == "" }, 0},
		{"an unknown protocol is ignored and reported", []map[string]string{{"meshlet-protocol": "h3"}}, "", func(p Policy) bool { return p.Protocol == "" }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ov, err := ParseOverrides(tc.ov)
			if err != nil {
				t.Fatal(err)
			}
			p, problems := derivePolicy("web", tc.metas, ov)
			if !tc.check(p) {
				t.Errorf("policy = %+v", p)
			}
			if len(problems) != tc.issues {
				t.Errorf("problems = %q, want %d", problems, tc.issues)
			}
		})
	}
}

func TestParseOverrides(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{"", "", ""},
		{" web:sticky=cookie , sticky-cookie=CONTAINERID,api:balance=least-request ",
			"api:balance=least-request,web:sticky=cookie,sticky-cookie=CONTAINERID", ""},
		{"*:retries=0,Web:Sticky=cookie", "*:retries=0,web:sticky=cookie", ""},
		{"web:timeout=1h30m,web:timeout=2s", "web:timeout=2s", ""}, // the last one counts
		{"sticky=cookie", "", "which service?"},
		{"web:sticky", "", "want KEY=VALUE"},
		{"web:stiky=cookie", "", `unknown key "stiky"`},
		{"web:sticky=yes", "", `"yes" is not cookie or none`},
		{"web:retries=11", "", "from 0 to 10"},
		{"web:eject-max=101%", "", "percentage"},
		{"we b:sticky=cookie", "", "not a service name"},
		{":sticky=cookie", "", "not a service name"},
		{"web:sticky-cookie=a;b", "", "not a cookie name"},
	} {
		ov, err := ParseOverrides(tc.in)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "\n") {
				t.Errorf("ParseOverrides(%q) = %v, want a one-line error with %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("ParseOverrides(%q): %v", tc.in, err)
		case ov.String() != tc.want:
			t.Errorf("ParseOverrides(%q) = %q, want %q", tc.in, ov.String(), tc.want)
		}
	}
	if _, err := ParseOverrides(strings.Repeat("web:retries=1,", maxOverridesLen)); err == nil {
		t.Error("no error for an oversized value")
	}
}

// FuzzParseOverrides checks that no input panics, errors are one line,
// and what is accepted reads back the same after String.
func FuzzParseOverrides(f *testing.F) {
	for _, s := range []string{
		"web:sticky=cookie,sticky-cookie=CONTAINERID,sticky-max-age=3600",
		"*:balance=least-request,api:retries=0,timeout=1.5s",
		"web:eject-max=50%,retry-budget=20,retry-min=3/s,panic=true",
		"web:protocol=grpc,db:protocol=tcp,*:protocol=auto",
		":=,:,=,web:=x,web:a=b=c", "web:timeout=-1s", "\x00:\xff=\xfe",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ov, err := ParseOverrides(s)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("error is not one line: %q", err)
			}
			return
		}
		again, err := ParseOverrides(ov.String())
		if err != nil || again.String() != ov.String() {
			t.Fatalf("%q → %q → %q, %v", s, ov.String(), again.String(), err)
		}
		// Whatever was accepted derives a policy without problems.
		if _, problems := derivePolicy("web", nil, ov); len(problems) > 0 {
			t.Fatalf("accepted %q, but deriving a policy found %q", s, problems)
		}
	})
}

// FuzzPolicyMeta feeds arbitrary meta values: deriving never panics, and
// the policy stays within its bounds whatever the instances declare.
func FuzzPolicyMeta(f *testing.F) {
	f.Add("sticky", "cookie", "retries", "3")
	f.Add("sticky-max-age", "99999999999999999", "eject-time", "0")
	f.Add("retry-budget", "NaN", "retry-min", "1e309")
	f.Add("timeout", "-5s", "sticky-cookie", "\"quoted\"")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		metas := []map[string]string{{MetaPrefix + k1: v1, MetaPrefix + k2: v2}, {MetaPrefix + k1: v1}}
		p, _ := derivePolicy("web", metas, Overrides{})
		if p.Retries < 0 || p.Retries > 10 || p.Timeout < 0 || p.TryTimeout < 0 || p.CookieMaxAge < 0 ||
			p.EjectTime <= 0 || p.EjectMaxShare < 0 || p.EjectMaxShare > 1 || p.RetryBudget < 0 || p.RetryBudget > 1 ||
			p.RetryMinPerSec < 0 || p.EjectAfter < 0 || p.CookieName == "" ||
			(p.Balance != BalanceRoundRobin && p.Balance != BalanceLeastRequest) {
			t.Fatalf("policy out of bounds: %+v", p)
		}
		for _, c := range []byte(p.CookieName) {
			if !isTokenChar(c) {
				t.Fatalf("cookie name %q is not a token", p.CookieName)
			}
		}
	})
}

func TestPolicyStringReadsBackAsOverrides(t *testing.T) {
	p, _ := derivePolicy("web", []map[string]string{{"meshlet-sticky": "cookie", "meshlet-timeout": "1500ms", "meshlet-eject-max": "34"}}, Overrides{})
	ov, err := ParseOverrides("web:" + p.String())
	if err != nil {
		t.Fatalf("%q does not parse: %v", p.String(), err)
	}
	again, problems := derivePolicy("web", nil, ov)
	if again != p || len(problems) > 0 {
		t.Errorf("round trip: %+v, want %+v (%q)", again, p, problems)
	}
}
