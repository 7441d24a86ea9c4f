package upstream

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
)

// The sticky cookie's value is the first stickyIDLen bytes of
// HMAC-SHA256(key, node NUL service-ID), base64url without padding. The key
// is derived from the service and cookie names, and from --sticky-key when
// one is given, so every sidecar computes the same value for an instance,
// before and after restarts, without being configured; and the value says
// nothing about where the instance is. Without --sticky-key the value is
// opaque and stable but not secret: whoever knows the service ID can
// compute it.
const (
	stickyIDLen       = 16
	stickyValueLen    = 22 // base64url of stickyIDLen bytes, no padding
	maxCookieNameLen  = 64
	maxStickyCookies  = 8 // cookies of our name looked at per request
	stickyKeyContext  = "meshlet-sticky-v1"
	maxCookieHeaderLn = 16 << 10
)

// StickyID is a decoded cookie value.
type StickyID [stickyIDLen]byte

// cookieCodec computes the cookie values of one service's instances.
type cookieCodec struct {
	name string   // cookie name
	key  [32]byte // HMAC key for instance values
}

func newCookieCodec(service, cookieName string, secret []byte) *cookieCodec {
	c := &cookieCodec{name: cookieName}
	info := stickyKeyContext + "\x00" + service + "\x00" + cookieName
	if len(secret) > 0 {
		mac := hmac.New(sha256.New, secret)
		mac.Write([]byte(info))
		copy(c.key[:], mac.Sum(nil))
	} else {
		c.key = sha256.Sum256([]byte(info))
	}
	return c
}

// id returns the sticky ID of the instance with the given node and ID.
func (c *cookieCodec) id(node, serviceID string) StickyID {
	mac := hmac.New(sha256.New, c.key[:])
	mac.Write([]byte(node))
	mac.Write([]byte{0})
	mac.Write([]byte(serviceID))
	var id StickyID
	copy(id[:], mac.Sum(nil))
	return id
}

func (id StickyID) String() string {
	return base64.RawURLEncoding.EncodeToString(id[:])
}

// parseStickyValue decodes a cookie value; anything that is not exactly a
// value we could have made is rejected.
func parseStickyValue(v string) (StickyID, bool) {
	var id StickyID
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	if len(v) != stickyValueLen {
		return id, false
	}
	n, err := base64.RawURLEncoding.Strict().Decode(id[:], []byte(v))
	if err != nil || n != stickyIDLen {
		return StickyID{}, false
	}
	return id, true
}

// StickyCookies calls found with the decoded value of each cookie called
// name in the request's Cookie headers, in order, until it returns true,
// and reports whether it did. It reads at most maxCookieHeaderLn bytes of
// each header line and looks at most at maxStickyCookies cookies of that
// name, so a request stuffed with cookies costs little; values that do not
// decode are skipped.
func StickyCookies(h http.Header, name string, found func(StickyID) bool) bool {
	seen := 0
	for _, line := range h["Cookie"] {
		if hit, stop := StickyCookieLine(line, name, &seen, found); stop {
			return hit
		}
	}
	return false
}

// StickyCookieLine is StickyCookies for one Cookie header line; seen
// counts the cookies of that name across the request's lines. stop says
// that looking further is over: found returned true (hit) or too many
// cookies of the name were seen.
func StickyCookieLine(line, name string, seen *int, found func(StickyID) bool) (hit, stop bool) {
	if len(line) > maxCookieHeaderLn {
		line = line[:maxCookieHeaderLn]
	}
	for part := range strings.SplitSeq(line, ";") {
		// Trim as net/http and RFC 6265 do: ASCII blanks only, around the
		// pair and the name, so that meshlet reads the cookies the app
		// and the client read, no more, no fewer.
		k, v, ok := strings.Cut(trimBlanks(part), "=")
		if !ok || trimBlanks(k) != name {
			continue
		}
		if *seen++; *seen > maxStickyCookies {
			return false, true
		}
		if id, ok := parseStickyValue(v); ok && found(id) {
			return true, true
		}
	}
	return false, false
}

// setCookie is the Set-Cookie value pinning a client to id.
func (c *cookieCodec) setCookie(id StickyID, maxAge int) string {
	var b strings.Builder
	b.WriteString(c.name)
	b.WriteByte('=')
	b.WriteString(id.String())
	b.WriteString("; Path=/")
	if maxAge > 0 {
		b.WriteString("; Max-Age=")
		b.WriteString(strconv.Itoa(maxAge))
	}
	b.WriteString("; HttpOnly; SameSite=Lax")
	return b.String()
}

// SetsCookie reports whether a response already sets a cookie called name.
func SetsCookie(h http.Header, name string) bool {
	for _, line := range h["Set-Cookie"] {
		if CookieLineNames(line, name) {
			return true
		}
	}
	return false
}

// CookieLineNames reports whether a Set-Cookie value sets the cookie name.
func CookieLineNames(line, name string) bool {
	k, _, _ := strings.Cut(line, "=")
	return strings.TrimSpace(k) == name
}

// isTokenChar reports whether c may appear in a cookie name (an RFC 7230 token).
func isTokenChar(c byte) bool {
	return isAlnumByte(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// StickyValue is the sticky cookie value that names the instance with the
// given node and service ID, for a service's cookie name and sticky key
// (nil: none): what every sidecar of the mesh computes for it.
func StickyValue(service, cookieName string, key []byte, node, serviceID string) string {
	return newCookieCodec(service, cookieName, key).id(node, serviceID).String()
}

// trimBlanks trims the ASCII blanks net/http trims around a cookie
// (textproto.TrimString, which the routing core does not import): not
// Unicode spaces, which strings.TrimSpace would also take.
func trimBlanks(s string) string {
	isBlank := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }
	for len(s) > 0 && isBlank(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isBlank(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}
