package dns

import (
	"encoding/binary"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"
)

func packed(t testing.TB, m *mdns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSameQuestion(t *testing.T) {
	query := func() *mdns.Msg { return question("web.Example.org.", mdns.TypeA) }
	reply := func(change func(*mdns.Msg)) *mdns.Msg {
		m := new(mdns.Msg).SetReply(query())
		m.Answer = append(m.Answer, mustRR("web.example.org. 60 IN A 192.0.2.1"))
		change(m)
		return m
	}
	tests := []struct {
		name  string
		reply *mdns.Msg
		want  bool
	}{
		{"same", reply(func(*mdns.Msg) {}), true},
		{"name in other case", reply(func(m *mdns.Msg) { m.Question[0].Name = "WEB.EXAMPLE.ORG." }), true},
		{"other name", reply(func(m *mdns.Msg) { m.Question[0].Name = "www.example.org." }), false},
		{"longer name", reply(func(m *mdns.Msg) { m.Question[0].Name = "web.example.org.uk." }), false},
		{"other type", reply(func(m *mdns.Msg) { m.Question[0].Qtype = mdns.TypeAAAA }), false},
		// 0x41 and 0x61 differ only in what case folding would fold.
		{"type differs like case", reply(func(m *mdns.Msg) { m.Question[0].Qtype = 0x61 }), false},
		{"other class", reply(func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS }), false},
		{"no question", reply(func(m *mdns.Msg) { m.Question = nil }), false},
		{"two questions", reply(func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) }), false},
	}
	q := packed(t, query())
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := sameQuestion(q, packed(t, tc.reply)); got != tc.want {
				t.Errorf("sameQuestion = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestQuestionEndRejectsBrokenQuestions(t *testing.T) {
	good := packed(t, question("a.example.", mdns.TypeA))
	tests := []struct {
		name string
		msg  []byte
	}{
		{"short header", good[:headerLen-1]},
		{"cut in the name", good[:headerLen+3]},
		{"cut in the type", good[:len(good)-3]},
		{"pointer in the name", append(append([]byte(nil), good[:headerLen]...), 0xC0, 0x0C, 0, 1, 0, 1)},
		{"label past the end", append(append([]byte(nil), good[:headerLen]...), 63, 'a')},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if end, ok := questionEnd(tc.msg); ok {
				t.Errorf("questionEnd = %d, true; want false", end)
			}
		})
	}
	if end, ok := questionEnd(good); !ok || end != len(good) {
		t.Errorf("questionEnd of a whole query = %d, %v; want %d, true", end, ok, len(good))
	}
}

// FuzzDeliver feeds arbitrary datagrams to the reply demultiplexer: it must
// never panic, and hands a datagram to the waiting query only when it is a
// reply with the query's ID and question.
func FuzzDeliver(f *testing.F) {
	q := question("web.example.org.", mdns.TypeA)
	q.Id = 0x1234
	query, err := q.Pack()
	if err != nil {
		f.Fatal(err)
	}
	r := new(mdns.Msg).SetReply(q)
	r.Answer = append(r.Answer, mustRR("web.example.org. 60 IN A 192.0.2.1"))
	reply, _ := r.Pack()
	f.Add(reply)
	f.Add(query)
	f.Add(reply[:headerLen])
	f.Add(reply[:headerLen+5])
	upper := append([]byte(nil), reply...)
	copy(upper[headerLen:], strings.ToUpper(string(upper[headerLen:headerLen+17])))
	f.Add(upper)
	f.Add([]byte{})
	f.Add([]byte{0x12, 0x34, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, msg []byte) {
		c := &sharedUDPConn{waiting: map[uint16]*waiter{}}
		w := newWaiter()
		w.query = query
		w.buf = make([]byte, maxMsgLen)
		c.waiting[0x1234] = w
		c.deliver(msg)
		delivered := c.inflight() == 0
		want := len(msg) >= headerLen && binary.BigEndian.Uint16(msg) == 0x1234 && msg[2]&0x80 != 0 &&
			sameQuestion(query, msg)
		if delivered != want {
			t.Fatalf("delivered=%v, want %v for %x", delivered, want, msg)
		}
		if delivered {
			res := <-w.done
			if string(w.buf[:res.n]) != string(msg) {
				t.Fatalf("delivered %x, want %x", w.buf[:res.n], msg)
			}
		}
		if end, ok := questionEnd(msg); ok {
			if end > len(msg) || end < headerLen+5 {
				t.Fatalf("questionEnd %d out of range for %d bytes", end, len(msg))
			}
			if !sameQuestion(msg, msg) {
				t.Fatal("a message with a question does not match itself")
			}
			// Where miekg/dns reads the same question, it agrees on it.
			var m mdns.Msg
			if m.Unpack(msg) == nil && len(m.Question) == 1 {
				qq := new(mdns.Msg)
				qq.Question = m.Question
				if b, err := qq.Pack(); err == nil && !sameQuestion(b, msg) {
					t.Fatalf("question %v repacked does not match %x", m.Question[0], msg)
				}
			}
		}
	})
}
