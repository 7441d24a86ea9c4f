package dns

import "encoding/binary"

// questionEnd returns the offset just past the first question of msg (its
// name, type and class), or false when msg has not exactly one question or
// the question is cut short or uses a compression pointer (the first name
// of a message has nothing before it to point at).
func questionEnd(msg []byte) (int, bool) {
	if len(msg) < headerLen || binary.BigEndian.Uint16(msg[4:]) != 1 {
		return 0, false
	}
	i := headerLen
	for {
		if i >= len(msg) {
			return 0, false
		}
		l := int(msg[i])
		if l == 0 {
			i++
			break
		}
		if l&0xC0 != 0 {
			return 0, false
		}
		i += 1 + l
	}
	if i+4 > len(msg) {
		return 0, false
	}
	return i + 4, true
}

// sameQuestion reports whether reply answers the question of query: both
// carry exactly one question, with the same type and class and the same
// name up to ASCII case (resolvers may echo the name in another case).
// query is our own packed query, so its question is well formed.
func sameQuestion(query, reply []byte) bool {
	qEnd, ok := questionEnd(query)
	if !ok {
		return false
	}
	rEnd, ok := questionEnd(reply)
	if !ok || rEnd != qEnd {
		return false
	}
	nameEnd := qEnd - 4
	// Label lengths are at most 63, below every letter, so folding case
	// byte by byte never changes a length.
	if !equalFold(query[headerLen:nameEnd], reply[headerLen:nameEnd]) {
		return false
	}
	// Type and class are numbers: compared exactly.
	return string(query[nameEnd:qEnd]) == string(reply[nameEnd:qEnd])
}

func lowerByte(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}
