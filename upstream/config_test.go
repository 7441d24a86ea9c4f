package upstream

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Consul") {
		t.Errorf("New without a Consul client = %v, want an error naming it", err)
	}
	if _, err := New(Config{Consul: client, WaitTime: -time.Second}); err == nil || !strings.Contains(err.Error(), "WaitTime") {
		t.Errorf("New with a negative WaitTime = %v, want an error naming it", err)
	}
	cfg, err := Config{Consul: client}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.FirstAnswerTimeout != 5*time.Second || cfg.WaitTime != 5*time.Minute ||
		cfg.Dialer == nil || cfg.Dialer.Timeout != 2*time.Second || cfg.Logger == nil || cfg.RetryBackoff == nil ||
		cfg.SettleTime != 30*time.Second || cfg.MaxStale != 0 || cfg.CallTimeout != 5*time.Second || cfg.PingEvery != 5*time.Second {
		t.Errorf("defaults = %+v", cfg)
	}
	if cfg, _ := (Config{Consul: client, SettleTime: -1}).withDefaults(); cfg.SettleTime != 0 {
		t.Errorf("negative SettleTime = %v, want 0 (off)", cfg.SettleTime)
	}
	if _, err := New(Config{Consul: client, MaxStale: -time.Second}); err == nil || !strings.Contains(err.Error(), "MaxStale") {
		t.Errorf("New with a negative MaxStale = %v, want an error naming it", err)
	}
	d := &net.Dialer{}
	if cfg, _ := (Config{Consul: client, Dialer: d}).withDefaults(); cfg.Dialer != d {
		t.Error("the given dialer was replaced")
	}
}
