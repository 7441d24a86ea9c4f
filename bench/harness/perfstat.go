package harness

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// syscallCounter counts every system call of a process tree while a load
// runs, with perf's raw_syscalls tracepoint: /proc/PID/io counts only the
// read and write kinds, and not recv/send, so it cannot compare Go's
// proxies with nginx and HAProxy, nor see epoll_wait, futex or
// setsockopt. Without perf (or its tracepoints) it counts nothing and the
// tables say "–".
type syscallCounter struct {
	cmd  *exec.Cmd
	out  strings.Builder
	done chan struct{}
}

// countSyscalls starts counting the system calls of pid and its
// descendants for d; wait returns the count, or -1 when it could not
// count.
func countSyscalls(ctx context.Context, pid int, d time.Duration) *syscallCounter {
	sc := &syscallCounter{done: make(chan struct{})}
	path, err := exec.LookPath("perf")
	if err != nil || pid <= 0 {
		close(sc.done)
		return sc
	}
	pids := []string{strconv.Itoa(pid)}
	for _, c := range descendants(pid) {
		pids = append(pids, strconv.Itoa(c))
	}
	secs := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	sc.cmd = exec.CommandContext(ctx, path, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", strings.Join(pids, ","), "--", "sleep", secs)
	sc.cmd.Stderr = &sc.out // perf stat writes its counts to stderr
	if err := sc.cmd.Start(); err != nil {
		sc.cmd = nil
		close(sc.done)
		return sc
	}
	go func() {
		sc.cmd.Wait()
		close(sc.done)
	}()
	return sc
}

// wait returns the system calls counted, -1 if none could be.
func (sc *syscallCounter) wait() int64 {
	<-sc.done
	if sc.cmd == nil {
		return -1
	}
	return parsePerfCount(sc.out.String(), "raw_syscalls:sys_enter")
}

// parsePerfCount reads event's count from perf stat -x , output, -1 when
// it is not there (not counted, not supported).
func parsePerfCount(out, event string) int64 {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Split(line, ",")
		if len(f) >= 3 && f[2] == event {
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

func descendants(pid int) []int {
	var out []int
	for _, c := range children(pid) {
		out = append(out, c)
		out = append(out, descendants(c)...)
	}
	return out
}
