package h1

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/meshlet/meshlet/upstream/internal/frontend"
)

// The forwarder parses heads in place (RFC 9112), strictly: a request the
// instance could read differently from us (smuggling) is refused here.

// fieldKind is what the forwarder does with a header field.
type fieldKind uint8

const (
	fieldOther            fieldKind = iota // passed on as it is
	fieldHop                               // hop-by-hop: never passed on
	fieldHost                              // request: replaced by the one Host we send
	fieldForwarded                         // request: Forwarded, X-Forwarded-Host/-Proto: replaced by ours
	fieldXFF                               // request: X-Forwarded-For: the chain we append to
	fieldContentLength                     // passed on once, after validation
	fieldTransferEncoding                  // passed on as "chunked", after validation
	fieldConnection                        // hop-by-hop, and names more of them
	fieldTE                                // request: TE, passed on as "trailers" only
	fieldTrailer                           // passed on with a chunked body only
	fieldCookie                            // request: Cookie, read for stickiness
	fieldSetCookie                         // response: Set-Cookie, read for stickiness
	fieldExpect                            // request: Expect
	fieldUpgrade                           // hop-by-hop; an Upgrade request goes to net/http
)

// field is one header line of a head; name and value alias the head.
type field struct {
	name, value []byte
	line        []byte // the whole line, CRLF included
	kind        fieldKind
}

// head is what the forwarder knows of a parsed request or response head.
// Its slices alias the connection's read buffer: valid until it reads on.
type head struct {
	// request line, or status line: method = version, target = code, version = reason
	method, target, version []byte
	status                  int
	minor                   byte // HTTP/1.<minor>
	fields                  []field
	contentLength           int64 // -1: none
	chunked                 bool
	hosts                   int
	host                    []byte
	connClose               bool // Connection: close
	connKeepAlive           bool // Connection: keep-alive
	upgrade                 bool
	expect                  bool
	teTrailers              bool
}

// headError is a head we refuse, with the status that says so.
type headError struct {
	status int
	msg    string
}

func (e *headError) Error() string { return e.msg }

func badHead(format string, args ...any) error {
	return &headError{status: 400, msg: fmt.Sprintf(format, args...)}
}

// parseRequestHead parses a request head as readHead returns it.
func parseRequestHead(b []byte, h *head) error {
	h.reset()
	line, rest, err := cutLine(b)
	if err != nil {
		return badHead("malformed request line: %v", err)
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badHead("malformed request line")
	}
	h.method = line[:sp1]
	if !isToken(h.method) {
		return badHead("malformed method")
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 <= 0 {
		return badHead("malformed request line")
	}
	h.target = line[sp1+1 : sp1+1+sp2]
	for _, c := range h.target {
		if c <= ' ' || c == 0x7f {
			return badHead("malformed request target")
		}
	}
	h.version = line[sp1+1+sp2+1:]
	minor, ok := parseVersion(h.version)
	if !ok {
		return badHead("malformed HTTP version %q", h.version)
	}
	h.minor = minor
	if err := parseFields(rest, h, true); err != nil {
		return err
	}
	if h.minor >= 1 && h.hosts != 1 {
		return badHead("an HTTP/1.1 request needs exactly one Host header (it has %d)", h.hosts)
	}
	if h.hosts > 1 {
		return badHead("more than one Host header")
	}
	if !validHost(h.host) {
		return badHead("malformed Host header %q", clip(h.host))
	}
	return nil
}

// validHost accepts the characters net/http's server accepts in a Host
// (httpguts.ValidHostHeader): those of a host, a port, an IPv6 literal,
// a zone, and percent escapes.
func validHost(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || !(isAlnumByte(c) || strings.IndexByte("!$%&'()*+,-.:;=[]_~", c) >= 0) {
			return false
		}
	}
	return true
}

// parseResponseHead parses a status line and header fields.
func parseResponseHead(b []byte, h *head) error {
	h.reset()
	line, rest, err := cutLine(b)
	if err != nil {
		return fmt.Errorf("malformed status line: %w", err)
	}
	if len(line) < 12 || line[8] != ' ' {
		return fmt.Errorf("malformed status line %q", clip(line))
	}
	minor, ok := parseVersion(line[:8])
	if !ok {
		return fmt.Errorf("malformed status line %q", clip(line))
	}
	h.minor = minor
	h.version = line[:8]
	code := line[9:12]
	for _, c := range code {
		if c < '0' || c > '9' {
			return fmt.Errorf("malformed status code %q", clip(line))
		}
	}
	h.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if h.status < 100 {
		return fmt.Errorf("malformed status code %q", clip(line))
	}
	h.target = line[8:] // " 200 OK": what follows the version
	if len(line) > 12 {
		if line[12] != ' ' {
			return fmt.Errorf("malformed status line %q", clip(line))
		}
		for _, c := range line[13:] {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return fmt.Errorf("malformed reason phrase %q", clip(line))
			}
		}
	}
	if err := parseFields(rest, h, false); err != nil {
		var he *headError
		if errors.As(err, &he) {
			return errors.New(he.msg)
		}
		return err
	}
	return nil
}

func (h *head) reset() {
	fields := h.fields[:0]
	*h = head{fields: fields, contentLength: -1}
}

// release drops what a head was parsed into, so that nothing aliases the
// buffer it came from, and the fields slice too if a large head grew it:
// a connection that waits keeps no more than the usual.
func (h *head) release() {
	fields := h.fields[:0]
	if cap(fields) > keptFields {
		fields = nil
	}
	*h = head{fields: fields, contentLength: -1}
}

// maxFields is the most header fields a head may have (net/http has no
// such cap, but each field costs more than the 4 bytes of "a:\r\n" it can
// take in a head); keptFields is the capacity kept between heads.
const (
	maxFields  = 256
	keptFields = 64
)

// parseVersion accepts HTTP/1.0 to HTTP/1.9 and returns the minor digit.
func parseVersion(v []byte) (byte, bool) {
	if len(v) != 8 || string(v[:7]) != "HTTP/1." || v[7] < '0' || v[7] > '9' {
		return 0, false
	}
	return v[7] - '0', true
}

// cutLine splits off the first line, which must end in CRLF.
func cutLine(b []byte) (line, rest []byte, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, errors.New("no line end")
	}
	if i == 0 || b[i-1] != '\r' {
		return nil, nil, errBareLF
	}
	return b[:i-1], b[i+1:], nil
}

// maxConnTokens is the most tokens the Connection fields of a head may
// name together.
const maxConnTokens = 64

// parseFields parses the header lines of b, up to its empty line.
func parseFields(b []byte, h *head, request bool) error {
	teSeen := false
	// The Connection tokens, to mark the fields they name. Real heads have
	// one to three; a cap keeps a hostile one from costing tokens × fields.
	var conn [maxConnTokens][]byte
	nconn := 0
	for {
		full := b
		line, rest, err := cutLine(b)
		if err != nil {
			return badHead("malformed header line: %v", err)
		}
		b = rest
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return badHead("obsolete line folding")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return badHead("malformed header line %q", clip(line))
		}
		name := line[:colon]
		value := trimOWS(line[colon+1:])
		for _, c := range value {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return badHead("invalid character in the value of header %q", name)
			}
		}
		f := field{name: name, value: value, line: full[:len(line)+2], kind: classify1(name, request)}
		if request && f.kind == fieldOther && frontend.FramingLike(name) {
			return badHead("header %q could be read as Content-Length or Transfer-Encoding by an instance", clip(name))
		}
		switch f.kind {
		case fieldHost:
			h.hosts++
			h.host = value
		case fieldContentLength:
			n, ok := parseContentLength(value)
			if !ok {
				return badHead("malformed Content-Length %q", clip(value))
			}
			if h.contentLength >= 0 && h.contentLength != n {
				return badHead("conflicting Content-Length headers")
			}
			h.contentLength = n
		case fieldTransferEncoding:
			if teSeen {
				return badHead("more than one Transfer-Encoding header")
			}
			teSeen = true
			if !bytes.EqualFold(value, []byte("chunked")) {
				return &headError{status: 501, msg: fmt.Sprintf("unsupported transfer encoding %q", clip(value))}
			}
			h.chunked = true
		case fieldConnection:
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = trimOWS(tok)
				if len(tok) == 0 {
					continue
				}
				if nconn == len(conn) {
					return badHead("more than %d tokens in Connection", len(conn))
				}
				conn[nconn], nconn = tok, nconn+1
				switch {
				case bytes.EqualFold(tok, []byte("close")):
					h.connClose = true
				case bytes.EqualFold(tok, []byte("keep-alive")):
					h.connKeepAlive = true
				}
			}
		case fieldUpgrade:
			h.upgrade = true
		case fieldExpect:
			h.expect = true
		case fieldTE:
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok, _, _ = bytes.Cut(tok, []byte(";"))
				if bytes.EqualFold(trimOWS(tok), []byte("trailers")) {
					h.teTrailers = true
				}
			}
		}
		if len(h.fields) == maxFields {
			return &headError{status: 431, msg: fmt.Sprintf("more than %d header fields", maxFields)}
		}
		h.fields = append(h.fields, f)
	}
	if len(b) != 0 {
		return badHead("bytes after the head") // unreachable with readHead
	}
	if h.chunked && h.contentLength >= 0 {
		return badHead("both Transfer-Encoding and Content-Length")
	}
	// The headers Connection names are hop-by-hop too, whatever they are,
	// except those the framing and routing need. The tokens are capped, so
	// this is linear in the head's size.
	if nconn == 0 {
		return nil
	}
	toks := conn[:nconn]
	// Past a few tokens, a binary search: each field then costs a few
	// comparisons, however many tokens there are.
	sorted := nconn > 4
	if sorted {
		slices.SortFunc(toks, compareFold)
	}
	for i := range h.fields {
		f := &h.fields[i]
		switch f.kind {
		case fieldHost, fieldContentLength, fieldTransferEncoding, fieldHop:
			continue
		}
		named := false
		if sorted {
			_, named = slices.BinarySearchFunc(toks, f.name, compareFold)
		} else {
			for _, tok := range toks {
				if len(tok) == len(f.name) && bytes.EqualFold(f.name, tok) {
					named = true
					break
				}
			}
		}
		if named {
			f.kind = fieldHop
		}
	}
	return nil
}

// compareFold orders ASCII byte strings ignoring case, as field names
// compare.
func compareFold(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		x, y := lowerASCII(a[i]), lowerASCII(b[i])
		if x != y {
			return int(x) - int(y)
		}
	}
	return len(a) - len(b)
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// classify1 tells the kind of a header field by its name.
func classify1(name []byte, request bool) fieldKind {
	eq := func(s string) bool { return len(name) == len(s) && bytes.EqualFold(name, []byte(s)) }
	switch len(name) {
	case 2:
		if eq("te") {
			if request {
				return fieldTE
			}
			return fieldHop
		}
	case 4:
		if request && eq("host") {
			return fieldHost
		}
	case 6:
		if request && eq("cookie") {
			return fieldCookie
		}
		if request && eq("expect") {
			return fieldExpect
		}
	case 7:
		if eq("upgrade") {
			return fieldUpgrade
		}
		if eq("trailer") {
			return fieldTrailer
		}
	case 9:
		if request && eq("forwarded") {
			return fieldForwarded
		}
	case 10:
		if eq("connection") {
			return fieldConnection
		}
		if eq("keep-alive") {
			return fieldHop
		}
		if !request && eq("set-cookie") {
			return fieldSetCookie
		}
	case 14:
		if eq("content-length") {
			return fieldContentLength
		}
	case 15:
		if request && eq("x-forwarded-for") {
			return fieldXFF
		}
	case 16:
		if eq("proxy-connection") {
			return fieldHop
		}
		if request && eq("x-forwarded-host") {
			return fieldForwarded
		}
	case 17:
		if eq("transfer-encoding") {
			return fieldTransferEncoding
		}
		if request && eq("x-forwarded-proto") {
			return fieldForwarded
		}
	case 18:
		if eq("proxy-authenticate") {
			return fieldHop
		}
	case 19:
		if eq("proxy-authorization") {
			return fieldHop
		}
	}
	return fieldOther
}

// parseContentLength accepts 1 to 18 digits.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !isTokenChar(c) {
			return false
		}
	}
	return true
}

// clip shortens what goes into an error message.
func clip(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// isAlnumByte reports whether c is an ASCII letter or digit.
func isAlnumByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// isTokenChar reports whether c may appear in an RFC 9110 token.
func isTokenChar(c byte) bool {
	return isAlnumByte(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// closeWriter is a connection that can end one direction only, as
// *net.TCPConn can.
type closeWriter interface {
	CloseWrite() error
}
