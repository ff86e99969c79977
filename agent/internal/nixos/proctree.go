package nixos

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// killGrace is how long a cancelled step's processes get between SIGTERM and
// SIGKILL. nix needs it: on SIGTERM it kills its builders itself.
var killGrace = 5 * time.Second

// procTree stops a cancelled command and everything it started. Killing the
// command's process group is not enough: nix runs each builder in a session of its
// own (setsid), so a builder — and what the builder forked, like the fixture's
// sleep — is in no group of ours, and survives a SIGKILL of nix as an orphan. So the
// tree is found through /proc (parent links), each process remembered with its start
// time (a pid reused by an unrelated process is never signalled), and signalled by
// group and by pid: SIGTERM first, which lets nix clean up, SIGKILL after killGrace,
// and SIGKILL again for any remembered process still alive once the command ended.
type procTree struct {
	root int

	mu     sync.Mutex
	seen   map[int]uint64 // pid → start time (clock ticks since boot)
	killer *time.Timer
	done   bool
}

func newProcTree() *procTree { return &procTree{seen: map[int]uint64{}} }

// terminate sends SIGTERM to the tree below root and schedules SIGKILL after grace.
func (t *procTree) terminate(root int, grace time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done || t.killer != nil {
		return
	}
	t.root = root
	t.signalLocked(syscall.SIGTERM)
	t.killer = time.AfterFunc(grace, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.done {
			t.signalLocked(syscall.SIGKILL)
		}
	})
}

// finish is called once the command was reaped. After a cancellation it kills what
// is left of the tree (orphans reparented to init keep their start times), then
// stops all signalling: the root's pid may now name another process.
func (t *procTree) finish() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.killer != nil {
		t.killer.Stop()
		for pid, start := range t.seen {
			if s, ok := startTime(pid); ok && s == start {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	t.done = true
}

// signalLocked signals the root's group, the groups of its descendants and each
// descendant, and remembers the descendants.
func (t *procTree) signalLocked(sig syscall.Signal) {
	own := syscall.Getpgrp()
	groups := map[int]bool{t.root: true}
	for _, p := range descendants(t.root) {
		if _, ok := t.seen[p.pid]; !ok {
			t.seen[p.pid] = p.start
		}
		if p.pgid > 0 && p.pgid != own {
			groups[p.pgid] = true
		}
	}
	for g := range groups {
		_ = syscall.Kill(-g, sig)
	}
	for pid, start := range t.seen {
		if s, ok := startTime(pid); ok && s == start {
			_ = syscall.Kill(pid, sig)
		}
	}
}

type procInfo struct {
	pid, ppid, pgid int
	start           uint64
}

// descendants lists the processes below root (not root itself), from /proc.
func descendants(root int) []procInfo {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]procInfo{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(pid); ok {
			children[p.ppid] = append(children[p.ppid], p)
		}
	}
	var out []procInfo
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

func startTime(pid int) (uint64, bool) {
	p, ok := readStat(pid)
	return p.start, ok
}

// readStat parses /proc/<pid>/stat: "pid (comm) state ppid pgrp session … starttime"
// (starttime is field 22). comm may hold spaces and parentheses, so fields are
// counted from the last ')'.
func readStat(pid int) (procInfo, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 || f[0] == "Z" {
		return procInfo{}, false // a zombie is dead already
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgid, err2 := strconv.Atoi(f[2])
	start, err3 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return procInfo{}, false
	}
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, start: start}, true
}
