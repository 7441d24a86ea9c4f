package upstream

// Names the external tests (package upstream_test) need.
type StateFile = stateFile

const StateVersion = stateVersion
