package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sys/unix"
)

// stateVersion is the format of the state file.
const stateVersion = 1

// stateFile is what meshlet remembers across restarts, so that one
// restarted while Consul is unreachable still routes: the service names of
// the catalog and every registered instance of the services in use.
type stateFile struct {
	Version int    `json:"version"`
	Consul  string `json:"consul"` // the StateID it belongs to
	// ConfirmedAt is when Consul last confirmed the data: when it last
	// answered, a query or the liveness check (which it does at least
	// every few seconds while it is up); never merely the time of writing.
	ConfirmedAt time.Time             `json:"confirmed_at"`
	Catalog     []string              `json:"catalog"`
	Services    map[string][]Endpoint `json:"services"`
}

const (
	maxStateFileSize = 16 << 20
	stateWriteEvery  = time.Second     // at most one write per second
	stateHeartbeat   = 1 * time.Minute // rewrite, to keep ConfirmedAt as fresh as Consul's last answer
)

// StateDirError is New's error when Config.StateDir cannot be used.
type StateDirError struct {
	Dir string
	Err error
}

func (e *StateDirError) Error() string { return fmt.Sprintf("state directory %q: %v", e.Dir, e.Err) }
func (e *StateDirError) Unwrap() error { return e.Err }

// stateStore writes the state file in the background. A nil *stateStore
// keeps nothing.
type stateStore struct {
	path    string
	lock    *os.File
	log     *slog.Logger
	dirty   chan struct{}
	problem string // why state is not kept, for Status; "" when it is
}

// openState prepares dir (made if missing) for the state of the Consul
// cluster id, and takes its lock. A directory another meshlet holds gives
// a store that keeps nothing and says why; a directory that cannot be used
// at all is an error.
func openState(dir, id string, log *slog.Logger) (*stateStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, &StateDirError{Dir: dir, Err: err}
	}
	path := filepath.Join(dir, "state-"+safeFileName(id)+".json")
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, &StateDirError{Dir: dir, Err: err}
	}
	s := &stateStore{path: path, log: log, dirty: make(chan struct{}, 1)}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			s.problem = fmt.Sprintf("state file %s is in use by another meshlet; not keeping state", path)
			log.Warn("state file in use by another meshlet: running without saved state", "path", path)
			s.path = ""
			return s, nil
		}
		return nil, &StateDirError{Dir: dir, Err: fmt.Errorf("locking %s: %w", lock.Name(), err)}
	}
	s.lock = lock
	return s, nil
}

// safeFileName turns a Consul address into a file name part.
func safeFileName(id string) string {
	b := []byte(id)
	for i, c := range b {
		if !isAlnumByte(c) && c != '.' && c != '-' {
			b[i] = '_'
		}
	}
	if len(b) == 0 {
		return "default"
	}
	return string(b[:min(len(b), 100)])
}

// changed asks for the state to be written soon.
func (s *stateStore) changed() {
	if s == nil || s.path == "" {
		return
	}
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// load reads the state file; a missing file is not an error.
func (s *stateStore) load() (*stateFile, error) {
	if s == nil || s.path == "" {
		return nil, nil
	}
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading state file %s: %w", s.path, err)
	}
	if len(b) > maxStateFileSize {
		return nil, fmt.Errorf("state file %s is larger than %d bytes", s.path, maxStateFileSize)
	}
	return decodeState(b)
}

// decodeState parses and checks a state file, dropping what cannot be
// routed to.
func decodeState(b []byte) (*stateFile, error) {
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("state file: version %d, want %d", st.Version, stateVersion)
	}
	if st.ConfirmedAt.IsZero() || st.ConfirmedAt.After(time.Now().Add(time.Minute)) {
		return nil, fmt.Errorf("state file: confirmed_at %v is not a plausible time", st.ConfirmedAt)
	}
	catalog := st.Catalog[:0:0]
	for _, name := range st.Catalog {
		if validServiceName(name) {
			catalog = append(catalog, strings.ToLower(name))
		}
	}
	st.Catalog = catalog
	services := map[string][]Endpoint{}
	for name, eps := range st.Services {
		if !validServiceName(name) {
			continue
		}
		var ok []Endpoint
		for _, e := range eps {
			if validSavedEndpoint(&e) {
				ok = append(ok, e)
			}
		}
		services[strings.ToLower(name)] = ok
	}
	st.Services = services
	return &st, nil
}

func validSavedEndpoint(e *Endpoint) bool {
	host, port, err := net.SplitHostPort(e.Addr)
	if err != nil || host == "" || e.ID == "" {
		return false
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return false
	}
	if e.MTLS != (e.AppAddr != "") || (e.MTLS && !validSavedEndpoint(&Endpoint{ID: e.ID, Addr: e.AppAddr, Status: e.Status})) {
		return false
	}
	switch e.Status {
	case api.HealthPassing, api.HealthWarning, api.HealthCritical:
	default:
		return false
	}
	e.Weight = max(e.Weight, 1)
	return true
}

// write replaces the state file atomically: a crash leaves the old file or
// the new one, never a mix.
func (s *stateStore) write(st *stateFile) error {
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	dir := filepath.Dir(s.path)
	tmp, err := os.CreateTemp(dir, filepath.Base(s.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing state %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing state %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fmt.Errorf("replacing state file: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // the rename itself survives a power cut only once the directory is synced
		d.Close()
	}
	return nil
}

// run writes the state when it changed, at most once per stateWriteEvery,
// and every stateHeartbeat while Consul answers; and once more when ctx
// ends. snapshot returns nil when there is nothing worth writing.
func (s *stateStore) run(ctx context.Context, snapshot func(final bool) *stateFile) {
	if s == nil || s.path == "" {
		return
	}
	defer s.lock.Close()
	heartbeat := time.NewTicker(stateHeartbeat)
	defer heartbeat.Stop()
	failing := false
	save := func(final bool) {
		st := snapshot(final)
		if st == nil {
			return
		}
		if err := s.write(st); err != nil {
			if !failing {
				s.log.Warn("cannot save state; a restart during a consul outage would not route", "err", err)
			}
			failing = true
			return
		}
		if failing {
			s.log.Info("saving state again", "path", s.path)
		}
		failing = false
	}
	for {
		select {
		case <-ctx.Done():
			save(true)
			return
		case <-s.dirty:
			save(false)
			if !sleepCtx(ctx, stateWriteEvery) {
				save(true)
				return
			}
		case <-heartbeat.C:
			save(false)
		}
	}
}
