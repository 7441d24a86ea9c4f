package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// which Linux fixes at 100 for every architecture the project runs on.
const clockTick = 10 * time.Millisecond

// procCPU returns the CPU time (user + system) pid has used so far,
// including its threads; 0 when it is gone.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may hold spaces; the fields after it are fixed.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * clockTick
}

// treeCPU is procCPU summed over pid and its descendants (nginx's master
// and worker).
func treeCPU(pid int) time.Duration {
	total := procCPU(pid)
	for _, c := range children(pid) {
		total += treeCPU(c)
	}
	return total
}

func children(pid int) []int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// procRSS returns pid's resident set size in bytes (VmRSS), 0 when gone.
func procRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// procComm returns the command name of pid ("" when gone).
func procComm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// procSyscalls returns the read- and write-type system calls pid has made
// so far (syscr + syscw of /proc/PID/io: read, write, recv, send and their
// vector forms), summed over its descendants.
func procSyscalls(pid int) int64 {
	var n int64
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "syscr" || k == "syscw") {
				x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += x
			}
		}
	}
	for _, c := range children(pid) {
		n += procSyscalls(c)
	}
	return n
}

// procSwitches returns the context switches (voluntary and not) of every
// thread of pid and of its descendants so far.
func procSwitches(pid int) int64 {
	var n int64
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
				x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				n += x
			}
		}
	}
	for _, c := range children(pid) {
		n += procSwitches(c)
	}
	return n
}

// rssParts splits pid's resident memory (from /proc/PID/smaps) into pages
// of its executable file (code and read-only data), anonymous pages (Go's
// heap, stacks and runtime structures) and the rest, in bytes.
func rssParts(pid int) (exe, anon, other int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, 0
	}
	self, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	kind := &other
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			// A mapping's header: address range, perms, offset, dev, inode[, path].
			switch {
			case len(f) >= 6 && f[5] == self:
				kind = &exe
			case len(f) < 6 || f[5] == "[heap]":
				kind = &anon
			default:
				kind = &other
			}
			continue
		}
		if f[0] == "Rss:" && len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			*kind += kb << 10
		}
	}
	return exe, anon, other
}
