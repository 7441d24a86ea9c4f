package intercept

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// testConfig is a valid config with the documented defaults.
func testConfig() Config {
	return Config{
		DNSPort:      15053,
		OutboundPort: 15001,
		VIPCIDR:      netip.MustParsePrefix("127.77.0.0/16"),
		Mark:         0x1e,
		ExcludeUID:   -1,
	}
}

func TestRules(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want []string
	}{
		{
			name: "mark only",
			edit: func(*Config) {},
			want: []string{
				"-m mark --mark 0x1e -j RETURN",
				"-p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
				"-p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
				"-d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001",
			},
		},
		{
			name: "uid only",
			edit: func(c *Config) { c.Mark, c.ExcludeUID = 0, 1337 },
			want: []string{
				"-m owner --uid-owner 1337 -j RETURN",
				"-p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
				"-p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
				"-d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001",
			},
		},
		{
			name: "mark and uid 0, other ports and range, host bits dropped",
			edit: func(c *Config) {
				c.Mark, c.ExcludeUID = 0xffffffff, 0
				c.DNSPort, c.OutboundPort = 5353, 9000
				c.VIPCIDR = netip.MustParsePrefix("127.88.3.4/24")
			},
			want: []string{
				"-m mark --mark 0xffffffff -j RETURN",
				"-m owner --uid-owner 0 -j RETURN",
				"-p udp -m udp --dport 53 -j REDIRECT --to-ports 5353",
				"-p tcp -m tcp --dport 53 -j REDIRECT --to-ports 5353",
				"-d 127.88.3.0/24 -p tcp -j REDIRECT --to-ports 9000",
			},
		},
		{
			name: "single VIP",
			edit: func(c *Config) { c.VIPCIDR = netip.MustParsePrefix("127.77.0.1/32") },
			want: []string{
				"-m mark --mark 0x1e -j RETURN",
				"-p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
				"-p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
				"-d 127.77.0.1/32 -p tcp -j REDIRECT --to-ports 15001",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.edit(&cfg)
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			var got []string
			for _, r := range cfg.Rules() {
				got = append(got, strings.Join(r, " "))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Rules() =\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want []string // substrings the error must hold; none = valid
	}{
		{name: "defaults", edit: func(*Config) {}},
		{name: "uid instead of mark", edit: func(c *Config) { c.Mark, c.ExcludeUID = 0, 1000 }},
		{name: "no exclusion", edit: func(c *Config) { c.Mark = 0 }, want: []string{"Mark is 0 and ExcludeUID is -1", "capture its own traffic"}},
		{name: "DNS port 0", edit: func(c *Config) { c.DNSPort = 0 }, want: []string{"DNSPort is 0"}},
		{name: "outbound port 0", edit: func(c *Config) { c.OutboundPort = 0 }, want: []string{"OutboundPort is 0"}},
		{name: "same ports", edit: func(c *Config) { c.OutboundPort = c.DNSPort }, want: []string{"DNSPort and OutboundPort are both 15053"}},
		{name: "VIPCIDR unset", edit: func(c *Config) { c.VIPCIDR = netip.Prefix{} }, want: []string{"VIPCIDR is not set"}},
		{name: "VIPCIDR IPv6", edit: func(c *Config) { c.VIPCIDR = netip.MustParsePrefix("fd00::/64") }, want: []string{"VIPCIDR fd00::/64 is not IPv4"}},
		{name: "VIPCIDR 4in6", edit: func(c *Config) { c.VIPCIDR = netip.MustParsePrefix("::ffff:127.77.0.0/112") }, want: []string{"is not IPv4"}},
		{name: "VIPCIDR everything", edit: func(c *Config) { c.VIPCIDR = netip.MustParsePrefix("0.0.0.0/0") }, want: []string{"VIPCIDR 0.0.0.0/0 would redirect every TCP connection"}},
		{name: "uid below -1", edit: func(c *Config) { c.ExcludeUID = -2 }, want: []string{"ExcludeUID -2"}},
		{name: "uid too big", edit: func(c *Config) { c.ExcludeUID = 1 << 32 }, want: []string{"ExcludeUID 4294967296"}},
		{
			name: "zero value names every field",
			edit: func(c *Config) { *c = Config{} },
			want: []string{"DNSPort is 0", "OutboundPort is 0", "VIPCIDR is not set"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig()
			tt.edit(&cfg)
			err := cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
			if _, err := NewManager(cfg, newFakeIPTables()); err == nil {
				t.Errorf("NewManager accepted the invalid config")
			}
		})
	}
}
