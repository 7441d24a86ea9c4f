package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/meshlet/meshlet/integration/meshlab"
)

// A canary through a tag subset: web-1 and web-2 are tagged v1, web-3
// v2. The app's requests to v2.web.local reach web-3 only, web.local
// spreads over all three; while web-3 fails its check, v2.web.local gets
// a 503 and never a v1 instance; once it passes again, web-3 has the
// subset's requests back.
func TestCanaryTagSubset(t *testing.T) {
	w := startWorld(t, meshlab.Options{InstanceTags: [][]string{{"v1"}, {"v1"}, {"v2"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	web := resolveVIP(t, w, "web.local")
	v2 := resolveVIP(t, w, "v2.web.local")
	client := w.App.HTTPClient(5 * time.Second)
	canary := w.Instances[2].Name
	send := func(vip netip.Addr, host string, n int) map[string]int {
		var hits []hit
		for range n {
			hits = append(hits, getVia(ctx, client, vip, host, "/"))
		}
		return countBy(hits)
	}

	all := send(web, "web.local", 30)
	sub := send(v2, "v2.web.local", 30)
	t.Logf("healthy: web.local %v; v2.web.local %v", all, sub)
	if len(all) != 3 || all[canary] == 0 {
		t.Errorf("web.local spread %v, want all three instances", all)
	}
	if !maps.Equal(sub, map[string]int{canary: 30}) {
		t.Fatalf("v2.web.local spread %v, want all 30 on %s", sub, canary)
	}
	checkStateShowsSubset(t, w, v2)

	setHealth(t, w, w.Instances[2], "fail")
	if err := meshlab.Poll(ctx, 20*time.Second, "v2.web.local to have no instance", func() error {
		if h := getVia(ctx, client, v2, "v2.web.local", "/"); h.status != http.StatusServiceUnavailable {
			return fmt.Errorf("status %d from %q (%v)", h.status, h.instance, h.err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	failing := send(v2, "v2.web.local", 20)
	t.Logf("v2 instance critical: v2.web.local %v", failing)
	if !maps.Equal(failing, map[string]int{"status 503": 20}) {
		t.Errorf("v2.web.local while its only instance is critical: %v, want 20 × 503 and no v1 instance", failing)
	}

	setHealth(t, w, w.Instances[2], "ok")
	if err := meshlab.Poll(ctx, 20*time.Second, "v2.web.local to reach the canary again", func() error {
		if h := getVia(ctx, client, v2, "v2.web.local", "/"); h.status != http.StatusOK || h.instance != canary {
			return fmt.Errorf("status %d from %q (%v)", h.status, h.instance, h.err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	back := send(v2, "v2.web.local", 30)
	t.Logf("v2 instance passing again: v2.web.local %v", back)
	if !maps.Equal(back, map[string]int{canary: 30}) {
		t.Errorf("v2.web.local after recovery %v, want all 30 on %s", back, canary)
	}
}

// checkStateShowsSubset checks that /v1/state lists the subset with its
// service, tag, VIP and only the canary instance.
func checkStateShowsSubset(t *testing.T, w *meshlab.World, vip netip.Addr) {
	t.Helper()
	_, body, err := w.AdminGet(context.Background(), "/v1/state")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Services []struct {
			Name      string   `json:"name"`
			VIP       string   `json:"vip"`
			Endpoints []string `json:"endpoints"`
			Subset    *struct {
				Service string `json:"service"`
				Tag     string `json:"tag"`
			} `json:"subset"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/v1/state: %v", err)
	}
	for _, s := range st.Services {
		if s.Name != "v2.web" {
			continue
		}
		if s.VIP != vip.String() || s.Subset == nil || s.Subset.Service != "web" || s.Subset.Tag != "v2" || len(s.Endpoints) != 1 {
			t.Errorf("/v1/state shows the subset as %+v (subset %+v), want VIP %v, service web, tag v2, one endpoint", s, s.Subset, vip)
		}
		return
	}
	t.Error(errors.New("/v1/state does not list the subset v2.web:\n" + body))
}
