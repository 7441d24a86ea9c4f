package certs

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/meshlet/meshlet/certs/certstest"
)

func TestSnapshot(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	fc := certstest.NewConsul(ca)
	lc := ca.Sign(t, certstest.Leaf{Service: "web"})
	fc.SetLeaf("web", lc)
	m, _ := startManager(t, fc, "web", nil)
	s := m.Snapshot()
	leaf := certstest.TLSCert(t, lc).Leaf
	want := Snapshot{Ready: true, Service: "web", TrustDomain: tdA, Roots: 1, ActiveRoot: "ca-a",
		LeafURI: ca.URI("web", "dc1"), LeafSerial: SerialString(leaf.SerialNumber), LeafNotAfter: leaf.NotAfter.UTC()}
	if !s.LeafNotAfter.Equal(want.LeafNotAfter) || s.Ready != want.Ready || s.TrustDomain != want.TrustDomain ||
		s.LeafURI != want.LeafURI || s.LeafSerial != want.LeafSerial || s.Roots != 1 || s.ActiveRoot != "ca-a" || len(s.Warnings) != 0 {
		t.Errorf("snapshot %+v, want %+v", s, want)
	}
	b, err := json.Marshal(s)
	if err != nil || !strings.Contains(string(b), `"trust_domain":"`+tdA+`"`) || !strings.Contains(string(b), `"leaf_not_after":`) {
		t.Errorf("json %s, %v", b, err)
	}
	if id, ok := m.Identity(); !ok || id.Service != "web" {
		t.Errorf("identity %+v %v", id, ok)
	}
}

func TestSerialString(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{{0, "00"}, {1, "01"}, {0x1a2b, "1a:2b"}, {0x010203, "01:02:03"}} {
		if got := SerialString(bigInt(tc.in)); got != tc.want {
			t.Errorf("SerialString(%#x) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// The watches follow Consul's rules for blocking queries: they block on the
// last index, ask at once (index 0) after a failure, start again from 0
// when the index goes backwards, and never block on index 0 (an answer
// with index 0 is waited on as 1, instead of a busy loop).
func TestWatchIndexRules(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	fc := certstest.NewConsul(ca)
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "web"}))
	m, _ := startManager(t, fc, "web", func(c *Config) { c.WaitTime = 200 * time.Millisecond })
	_ = m
	// Both watches now block on index 11.
	waitFor(t, "blocking queries", func() bool { return slices.Contains(fc.WaitIndexes(), 11) })

	fc.Fail(errors.New("connection refused"))
	time.Sleep(100 * time.Millisecond)
	fc.Fail(nil)
	waitFor(t, "recovery", func() bool { return m.Snapshot().Warnings == nil })
	fc.SetIndex(5) // a restarted agent
	time.Sleep(600 * time.Millisecond)
	fc.SetIndex(0) // an answer with index 0
	before := fc.Calls()
	time.Sleep(time.Second)
	calls := fc.Calls() - before

	idx := fc.WaitIndexes()
	// Between the failure (while blocked on 11) and the recovery (index
	// 13), every query asks at once.
	last11, first13 := -1, slices.Index(idx, 13)
	for i, x := range idx[:max(first13, 0)] {
		if x == 11 {
			last11 = i
		}
	}
	if last11 < 0 || first13-last11 < 2 || slices.ContainsFunc(idx[last11+1:first13], func(i uint64) bool { return i != 0 }) {
		t.Errorf("queries between the failure and the recovery did not all ask at once: %v", idx)
	}
	// Index 5 after 13: start again from 0, then block on 5.
	i5 := slices.Index(idx, 5)
	if i5 < 1 || !slices.Contains(idx[i5-2:i5], 0) {
		t.Errorf("index went backwards to 5 without a query from 0 before blocking on it: %v", idx)
	}
	// Index 0: blocked on 1, never a stream of index-0 queries.
	if !slices.Contains(idx, 1) {
		t.Errorf("no query blocking on index 1 after an answer with index 0: %v", idx)
	}
	if calls > 2*(1000/200+2) {
		t.Errorf("%d queries in a second with a 200ms wait time: a busy loop", calls)
	}
}

// With Consul failing, the last roots and leaf keep serving, and the
// snapshot says that Consul fails; a leaf for another service is refused.
func TestConsulDownKeepsServing(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	fc := certstest.NewConsul(ca)
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "web"}))
	fc.SetLeaf("web-client", ca.Sign(t, certstest.Leaf{Service: "web-client"}))
	srv, logs := startManager(t, fc, "web", nil)
	cli, _ := startManager(t, fc, "web-client", nil)
	s := serve(t, srv.ServerConfig(nil))

	fc.Fail(errors.New("dial tcp 127.0.0.1:8500: connect: connection refused"))
	waitFor(t, "warnings", func() bool { return len(srv.Snapshot().Warnings) == 2 })
	if _, err := dial(s.addr(), cli.ClientConfig(Target{Service: "web"})); err != nil {
		t.Errorf("handshake with consul down: %v", err)
	}
	if w := strings.Join(srv.Snapshot().Warnings, "\n"); !strings.Contains(w, "connection refused") {
		t.Errorf("warnings %q", w)
	}
	if !strings.Contains(logs.String(), "the last roots and leaf keep serving") {
		t.Errorf("log does not say consul failed:\n%s", logs)
	}
	fc.Fail(nil)
	waitFor(t, "no warnings", func() bool { return srv.Snapshot().Warnings == nil })

	serial := srv.Snapshot().LeafSerial
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "db"}))
	waitFor(t, "warning about the leaf", func() bool { return len(srv.Snapshot().Warnings) == 1 })
	if got := srv.Snapshot(); got.LeafSerial != serial || !strings.Contains(got.Warnings[0], `names service "db"`) {
		t.Errorf("after a leaf for db: %+v", got)
	}
}

func TestNotReadyRefuses(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	fc := certstest.NewConsul(ca) // no leaf
	m, err := New(Config{Consul: fc, Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Ready():
		t.Fatal("ready before running")
	default:
	}
	if _, err := m.leafCert(); !errors.Is(err, ErrNotReady) {
		t.Errorf("leaf before ready: %v", err)
	}
	if _, err := m.verify(nil, 0); !errors.Is(err, ErrNotReady) {
		t.Errorf("verify before ready: %v", err)
	}
	if s := m.Snapshot(); s.Ready {
		t.Errorf("snapshot ready: %+v", s)
	}
	for _, cfg := range []Config{{Service: "web"}, {Consul: fc}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

func TestParseRootsKeepsGoodOnes(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	for _, tc := range []struct {
		name string
		list *api.CARootList
		n    int
		err  string
	}{
		{"nil", nil, 0, "no CA roots"},
		{"empty", &api.CARootList{}, 0, "no CA roots"},
		{"one good one bad", &api.CARootList{Roots: []*api.CARoot{{ID: "bad", RootCertPEM: "junk"}, {ID: "a", RootCertPEM: ca.PEM}}}, 1, ""},
		{"only bad", &api.CARootList{Roots: []*api.CARoot{{ID: "bad", RootCertPEM: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}}, 0, "none of consul's 1 CA roots parses"},
	} {
		_, n, _, err := parseRoots(tc.list)
		if n != tc.n || (tc.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: n=%d err=%v, want n=%d err~%q", tc.name, n, err, tc.n, tc.err)
		}
	}
}

// A leaf near its expiry without renewal is warned about in the log (once,
// not at every check) and in the snapshot; a fresh one is not.
func TestExpiryWarning(t *testing.T) {
	ca := certstest.NewCA(t, "ca-a", tdA)
	fc := certstest.NewConsul(ca)
	now := time.Now()
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "web", NotBefore: now.Add(-95 * time.Minute), NotAfter: now.Add(4 * time.Minute)}))
	m, logs := startManager(t, fc, "web", nil)
	m.checkExpiry()
	m.checkExpiry()
	if n := strings.Count(logs.String(), "was not renewed"); n != 1 {
		t.Errorf("%d expiry warnings in the log, want 1:\n%s", n, logs)
	}
	if w := m.Snapshot().Warnings; len(w) != 1 || !strings.Contains(w[0], "expires in") {
		t.Errorf("warnings %q", w)
	}
	// Past its expiry it says so.
	if w := expiryWarning(m.state.Load(), now.Add(10*time.Minute)); !strings.Contains(w, "expired at") {
		t.Errorf("warning after expiry: %q", w)
	}

	// Renewed: no warning.
	fc.SetLeaf("web", ca.Sign(t, certstest.Leaf{Service: "web", NotBefore: now.Add(-time.Minute), NotAfter: now.Add(72 * time.Hour)}))
	waitFor(t, "renewal", func() bool { return m.Snapshot().Warnings == nil })
	for _, left := range []time.Duration{72 * time.Hour, 4 * time.Hour} {
		c := certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "web", NotBefore: now.Add(left - 72*time.Hour), NotAfter: now.Add(left)}))
		if w := expiryWarning(&material{leaf: &c, leafSerial: "x"}, now); w != "" {
			t.Errorf("%v of 72h left: warned %q", left, w)
		}
	}
	c := certstest.TLSCert(t, ca.Sign(t, certstest.Leaf{Service: "web", NotBefore: now.Add(-69 * time.Hour), NotAfter: now.Add(3 * time.Hour)}))
	if w := expiryWarning(&material{leaf: &c, leafSerial: "x"}, now); w == "" {
		t.Error("3h of 72h left: no warning")
	}
}
