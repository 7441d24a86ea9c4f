package upstream

import (
	"fmt"
	"sync"
	"testing"
)

// A rebuild on the connect watch's news (setSidecars) must never bring
// back an older health answer than the one the health watch applied
// meanwhile: each health answer here has one instance more than the one
// before, so the view may never shrink once an answer was applied.
func TestConnectRebuildKeepsNewestHealthAnswer(t *testing.T) {
	m := &Mesh{cfg: Config{MTLS: MTLSPermissive, ClientTLS: fakeIdentity{}}, log: testLogger(t)}
	m.mtls.on, m.mtls.watching = true, true
	w := newServiceWatch("web")
	const answers = 400
	eps := make([]Endpoint, 0, answers)
	for i := range answers {
		eps = append(eps, Endpoint{ID: fmt.Sprintf("i%03d", i), Node: "n", Addr: fmt.Sprintf("10.0.%d.%d:8080", i/200, i%200+1), Status: "passing"})
	}
	w.update(eps[:1], m, false)

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		on := map[string]string{"n\x00i000": "10.9.0.1:21000"}
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if i%2 == 0 {
				w.setSidecars(on, m)
			} else {
				w.setSidecars(map[string]string{}, m)
			}
		}
	}()
	var shrank []string
	for n := 2; n <= answers; n++ {
		w.update(eps[:n], m, false)
		if got := w.view.Load().all.Len(); got < n {
			shrank = append(shrank, fmt.Sprintf("%d after answer %d", got, n))
		}
	}
	close(done)
	wg.Wait()
	if got := w.view.Load().all.Len(); got != answers {
		shrank = append(shrank, fmt.Sprintf("%d at the end", got))
	}
	if len(shrank) > 0 {
		t.Errorf("the view went back to an older health answer: %v", shrank)
	}
}
