package registration

import (
	"reflect"
	"strings"
	"testing"
	"text/template"

	sockaddrtemplate "github.com/hashicorp/go-sockaddr/template"
)

// FuzzParseExpr checks the parser on any input: no panic; errors are one
// line and say what is wrong; whatever is accepted prints back to a
// template with the same tree, is a template text/template accepts too,
// and evaluates to what go-sockaddr/template gives.
func FuzzParseExpr(f *testing.F) {
	for _, s := range sameAsSockaddr {
		f.Add(s)
	}
	for _, s := range []string{
		"{ {{- /* c */}}{x", "a{{/**/}}b", "{{- /* c */ -}}", "{{ GetPrivateIP -}}  x",
		"{{ (GetAllInterfaces | limit 1 | ) | attr \"name\" }}", "{{ `a\r\nb` }}", "{{ \"\\xff\" }}",
		"{{ .5 }}", "{{ . }}.", "{{ 0b1 }}{{ 0o7 }}{{ 017 }}", "{{ GetPrivateIP }}{", "{{{ GetPrivateIP }}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		if len(src) > 300 {
			return // long inputs only slow the evaluation down
		}
		err := CheckTemplate(src)
		e, perr := parseExpr(src)
		if (err == nil) != (perr == nil) {
			t.Fatalf("CheckTemplate(%q) = %v but parseExpr gives %v", src, err, perr)
		}
		if err != nil {
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, "template") || len(msg) < len(src)+30 {
				t.Fatalf("CheckTemplate(%q): unclear error %q", src, msg)
			}
			return
		}
		printed := e.String()
		again, err := parseExpr(printed)
		if err != nil {
			t.Fatalf("%q prints as %q, which does not parse: %v", src, printed, err)
		}
		if !reflect.DeepEqual(e, again) {
			t.Fatalf("%q prints as %q, which parses to another tree:\n%#v\n%#v", src, printed, e, again)
		}
		if _, err := template.New("x").Funcs(sockaddrtemplate.SourceFuncs).Funcs(sockaddrtemplate.SortFuncs).
			Funcs(sockaddrtemplate.FilterFuncs).Funcs(sockaddrtemplate.HelperFuncs).Parse(src); err != nil {
			t.Fatalf("meshlet accepts %q, text/template does not: %v", src, err)
		}
		ours, oursErr, theirs, theirsErr := evalBoth(src)
		if (oursErr == nil) != (theirsErr == nil) || ours != theirs {
			t.Fatalf("%q: meshlet gives %q, %v; go-sockaddr gives %q, %v", src, ours, oursErr, theirs, theirsErr)
		}
	})
}
