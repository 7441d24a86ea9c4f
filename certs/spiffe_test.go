package certs

import (
	"strings"
	"testing"
)

func TestParseID(t *testing.T) {
	const td = "11111111-2222-3333-4444-555555555555.consul"
	for _, tc := range []struct {
		in   string
		want ID
		err  string // substring of the error; "" means valid
	}{
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web", want: ID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web"}},
		{in: "SPIFFE://" + td + "/ns/default/dc/dc1/svc/web", want: ID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web"}},
		{in: "spiffe://" + td + "/ap/team/ns/ops/dc/eu-1/svc/db", want: ID{TrustDomain: td, Partition: "team", Namespace: "ops", Datacenter: "eu-1", Service: "db"}},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web%2Dx", want: ID{TrustDomain: td, Namespace: "default", Datacenter: "dc1", Service: "web-x"}},
		{in: "https://" + td + "/ns/default/dc/dc1/svc/web", err: "scheme"},
		{in: "spiffe:///ns/default/dc/dc1/svc/web", err: "no trust domain"},
		{in: "spiffe://" + td + ":8443/ns/default/dc/dc1/svc/web", err: "port"},
		{in: "spiffe://user@" + td + "/ns/default/dc/dc1/svc/web", err: "only a trust domain"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web?x=1", err: "only a trust domain"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web#f", err: "only a trust domain"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web?", err: "only a trust domain"},
		{in: "spiffe://Upper.consul/ns/default/dc/dc1/svc/web", err: "not allowed"},
		{in: "spiffe://[::1]/ns/default/dc/dc1/svc/web", err: "spiffe id"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/", err: "empty"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web/", err: "empty"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/a%2Fb", err: "not allowed"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/a%20b", err: "not allowed"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/a%00b", err: "not allowed"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/%ff", err: "UTF-8"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/%zz", err: "spiffe id"},
		{in: "spiffe://" + td + "/agent/client/dc/dc1/id/node1", err: "is not /ns/NS/dc/DC/svc/NAME"},
		{in: "spiffe://" + td + "/gateway/mesh/dc/dc1", err: "is not"},
		{in: "spiffe://" + td, err: "is not"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/web/extra/x", err: "is not"},
		{in: "spiffe://" + td + "/ap/p/ns/default/dc/dc1/svc", err: "is not"},
		{in: "spiffe:opaque", err: "only a trust domain"},
		{in: "spiffe://" + td + "/ns/default/dc/dc1/svc/" + strings.Repeat("a", 3000), err: "at most"},
		{in: "", err: "scheme"},
		{in: "://", err: "spiffe id"},
	} {
		got, err := ParseID(tc.in)
		if tc.err == "" {
			if err != nil {
				t.Errorf("ParseID(%q): %v", tc.in, err)
			} else if got != tc.want {
				t.Errorf("ParseID(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseID(%q) = %+v, %v; want an error with %q", tc.in, got, err, tc.err)
		}
	}
}

func TestIDStringRoundTrips(t *testing.T) {
	for _, id := range []ID{
		{TrustDomain: "a.consul", Namespace: "default", Datacenter: "dc1", Service: "web"},
		{TrustDomain: "a.consul", Partition: "p", Namespace: "ns", Datacenter: "dc1", Service: "wéb~x"},
	} {
		got, err := ParseID(id.String())
		if err != nil || got != id {
			t.Errorf("ParseID(%q) = %+v, %v; want %+v", id.String(), got, err, id)
		}
	}
}

func TestSameService(t *testing.T) {
	base := ID{TrustDomain: "a.consul", Namespace: "default", Datacenter: "dc1", Service: "web"}
	for _, tc := range []struct {
		name string
		mod  func(*ID)
		same bool
	}{
		{"identical", func(*ID) {}, true},
		{"other trust domain (not compared, as in Consul)", func(i *ID) { i.TrustDomain = "b.consul" }, true},
		{"case of the name", func(i *ID) { i.Service = "WEB" }, true},
		{"default partition spelled out", func(i *ID) { i.Partition = "default" }, true},
		{"other service", func(i *ID) { i.Service = "db" }, false},
		{"other datacenter", func(i *ID) { i.Datacenter = "dc2" }, false},
		{"other namespace", func(i *ID) { i.Namespace = "ops" }, false},
		{"other partition", func(i *ID) { i.Partition = "team" }, false},
	} {
		o := base
		tc.mod(&o)
		if got := base.SameService(o); got != tc.same {
			t.Errorf("%s: SameService = %v, want %v", tc.name, got, tc.same)
		}
	}
}

// FuzzParseID: no input panics, and whatever parses prints to a URI that
// parses back to the same identity.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://a.consul/ns/default/dc/dc1/svc/web",
		"spiffe://a.consul/ap/p/ns/default/dc/dc1/svc/web",
		"spiffe://a.consul/ns/default/dc/dc1/svc/we%2Fb",
		"spiffe://a.consul:1/ns/x",
		"spiffe://u@a/ns/default/dc/dc1/svc/web?x#y",
		"spiffe://a.consul/agent/client/dc/dc1/id/n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if id.TrustDomain == "" || id.Namespace == "" || id.Datacenter == "" || id.Service == "" {
			t.Fatalf("ParseID(%q) = %+v with an empty part", s, id)
		}
		again, err := ParseID(id.String())
		if err != nil {
			t.Fatalf("ParseID(%q) = %+v, whose String %q does not parse: %v", s, id, id.String(), err)
		}
		if again != id {
			t.Fatalf("ParseID(%q) = %+v, but its String %q parses to %+v", s, id, id.String(), again)
		}
	})
}
