package dns

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestReadResolvConf(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    []string
		wantErr string
	}{
		{name: "docker embedded dns",
			content: "nameserver 127.0.0.11\noptions ndots:0\n",
			want:    []string{"127.0.0.11:53"}},
		{name: "order kept, v6 bracketed, zone kept",
			content: "search example.org\nnameserver 10.0.0.2\nnameserver 2001:db8::1\nnameserver fe80::1%eth0\n",
			want:    []string{"10.0.0.2:53", "[2001:db8::1]:53", "[fe80::1%eth0]:53"}},
		{name: "comments, blanks, tabs, trailing words",
			content: "# nameserver 9.9.9.9\n; nameserver 8.8.8.8\n\n\tnameserver\t1.1.1.1  # cloudflare\n",
			want:    []string{"1.1.1.1:53"}},
		{name: "no trailing newline, CRLF",
			content: "nameserver 192.0.2.1\r\nnameserver 192.0.2.2",
			want:    []string{"192.0.2.1:53", "192.0.2.2:53"}},
		{name: "values that are no address are skipped like libc does",
			content: "nameserver dns.example.org\nnameserver 192.0.2.1:5353\nnameserver\nnameserver 192.0.2.9\n",
			want:    []string{"192.0.2.9:53"}},
		{name: "keyword is case-sensitive like libc",
			content: "NAMESERVER 192.0.2.1\nnameservers 192.0.2.2\n",
			wantErr: "no nameserver"},
		{name: "empty file", content: "", wantErr: "no nameserver"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "resolv.conf")
			if err := os.WriteFile(path, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ReadResolvConf(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("error %v, want one naming %s and saying %q", err, path, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadResolvConf: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReadResolvConfUnreadable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.conf")
	_, err := ReadResolvConf(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v, want one naming %s", err, path)
	}
}

func TestReadResolvConfHugeLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	content := "search " + strings.Repeat("a", 1<<17) + "\nnameserver 192.0.2.1\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := ReadResolvConf(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v, want one naming %s", err, path)
	}
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add("nameserver 127.0.0.11\noptions ndots:0\n")
	f.Add("nameserver 2001:db8::1\nnameserver fe80::1%eth0\r\n")
	f.Add("# x\n;y\nnameserver\nnameserver 1.2.3.4 extra\n")
	f.Add("nameserver ::ffff:1.2.3.4\nnameserver 300.1.1.1\n")
	f.Fuzz(func(t *testing.T, content string) {
		servers, err := parseResolvConf(strings.NewReader(content))
		if err != nil {
			return
		}
		for _, s := range servers {
			ap, err := netip.ParseAddrPort(s)
			if err != nil {
				t.Fatalf("server %q is not ip:port: %v", s, err)
			}
			if ap.Port() != 53 {
				t.Fatalf("server %q: port %d, want 53", s, ap.Port())
			}
		}
		if n := strings.Count(content, "nameserver"); len(servers) > n {
			t.Fatalf("%d servers from %d nameserver keywords", len(servers), n)
		}
	})
}
