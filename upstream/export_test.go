package upstream

import "time"

// Names the external tests (package upstream_test) need.
type StateFile = stateFile

const StateVersion = stateVersion

var DecodeState = decodeState

// StateSnapshot is what the state file would get now.
func (m *Mesh) StateSnapshot(final bool) *StateFile { return m.stateSnapshot(final) }

// FailingSince is since when Consul has not answered for a watched
// service; false when it is not watched.
func (m *Mesh) FailingSince(service string) (time.Time, bool) {
	w := m.watchOf(service)
	if w == nil {
		return time.Time{}, false
	}
	return time.Unix(0, w.failingSince.Load()), true
}
