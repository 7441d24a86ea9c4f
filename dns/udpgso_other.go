//go:build !linux

package dns

const gsoAvailable = false

func gsoControl(b []byte, _ int) []byte { return b[:0] }

func gsoRefused(error) bool { return true }
