package intercept

import (
	"slices"
	"strings"
	"testing"
)

func TestParseRuleLine(t *testing.T) {
	tests := []struct {
		line    string
		want    ruleLine
		wantErr string
	}{
		{line: "-P OUTPUT ACCEPT", want: ruleLine{op: "-P", chain: "OUTPUT", args: []string{"ACCEPT"}}},
		{line: "-N MESHLET_OUTPUT", want: ruleLine{op: "-N", chain: "MESHLET_OUTPUT", args: []string{}}},
		{line: "-A OUTPUT -j MESHLET_OUTPUT", want: ruleLine{op: "-A", chain: "OUTPUT", args: []string{"-j", "MESHLET_OUTPUT"}}},
		{
			line: `-A OUTPUT -m comment --comment "a b \"c\" \\d \'e" -j RETURN`,
			want: ruleLine{op: "-A", chain: "OUTPUT", args: []string{"-m", "comment", "--comment", `a b "c" \d 'e`, "-j", "RETURN"}},
		},
		{line: `-A X --comment ""  -j  RETURN `, want: ruleLine{op: "-A", chain: "X", args: []string{"--comment", "", "-j", "RETURN"}}},
		{line: "", wantErr: "want an operation and a chain"},
		{line: "-A", wantErr: "want an operation and a chain"},
		{line: "-X OUTPUT", wantErr: `unknown operation "-X"`},
		{line: "-N A B", wantErr: "-N takes only a chain name"},
		{line: "-P OUTPUT", wantErr: "-P takes a chain and a policy"},
		{line: `-A OUTPUT --comment "open`, wantErr: "unterminated quote"},
		{line: `-A OUTPUT --comment "x\`, wantErr: "backslash at end of line"},
		{line: `-A "" -j RETURN`, wantErr: "empty chain name"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, err := parseRuleLine(tt.line)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseRuleLine(%q) = %v, %v; want error with %q", tt.line, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseRuleLine(%q): %v", tt.line, err)
			}
			if got.op != tt.want.op || got.chain != tt.want.chain || !slices.Equal(got.args, tt.want.args) {
				t.Errorf("parseRuleLine(%q) = %#v, want %#v", tt.line, got, tt.want)
			}
		})
	}
}

func TestFormatRuleArgs(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{args: []string{"-d", "127.77.0.0/16", "-j", "REDIRECT"}, want: "-d 127.77.0.0/16 -j REDIRECT"},
		{args: []string{"--comment", `a "b"`}, want: `--comment "a \"b\""`},
		{args: []string{"--comment", ""}, want: `--comment ""`},
		{args: []string{`x\y`, "it's"}, want: `"x\\y" "it\'s"`},
	}
	for _, tt := range tests {
		if got := formatRuleArgs(tt.args); got != tt.want {
			t.Errorf("formatRuleArgs(%q) = %s, want %s", tt.args, got, tt.want)
		}
	}
}

// FuzzParseRuleLine feeds the `iptables -S` parser arbitrary lines: it must
// never panic, and what it accepts must survive formatting and re-parsing.
func FuzzParseRuleLine(f *testing.F) {
	for _, s := range []string{
		"-P OUTPUT ACCEPT",
		"-N MESHLET_OUTPUT",
		"-A OUTPUT -j MESHLET_OUTPUT",
		"-A MESHLET_OUTPUT -d 127.77.0.0/16 -p tcp -j REDIRECT --to-ports 15001",
		`-A OUTPUT -m comment --comment "a b \"c\" \\d" -j RETURN`,
		`-A X ""`,
		`-A X "`,
		`-A X "\`,
		"\t-A\tX\t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		l, err := parseRuleLine(line)
		if err != nil {
			return
		}
		again := append([]string{l.op, l.chain}, l.args...)
		l2, err := parseRuleLine(formatRuleArgs(again))
		if err != nil {
			t.Fatalf("re-parsing the formatted %q: %v", again, err)
		}
		if l2.op != l.op || l2.chain != l.chain || !slices.Equal(l2.args, l.args) {
			t.Fatalf("round trip of %q: got %#v, want %#v", line, l2, l)
		}
		_ = targetOf(l.args)
	})
}
