package meshlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// stopPolling is an error that ends a Poll at once.
type stopPolling struct{ error }

// StopPolling wraps err so that Poll gives up at once with it (the
// process it waits for has exited, say) instead of trying until its limit.
func StopPolling(err error) error { return stopPolling{err} }

// Poll calls f every 50 ms until it returns nil, returns an error made
// with StopPolling, or limit (or ctx) ends; the error names what was
// awaited and f's last error.
func Poll(ctx context.Context, limit time.Duration, what string, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		var stop stopPolling
		if errors.As(err, &stop) {
			return fmt.Errorf("waiting for %s: %w", what, stop.error)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Tail returns the last 15 lines of a process's output, for errors.
func Tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// RepoRoot returns the directory of the meshlet module the caller runs in.
func RepoRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the repository: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("finding the repository: not inside the meshlet module")
	}
	return filepath.Dir(mod), nil
}
