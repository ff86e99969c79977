package nixos

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// alive reports whether pid runs (a zombie is dead: only its parent's wait is missing).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

func waitPids(t *testing.T, files ...string) []int {
	t.Helper()
	var pids []int
	deadline := time.Now().Add(10 * time.Second)
	for _, f := range files {
		for {
			data, err := os.ReadFile(f)
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && perr == nil && pid > 0 {
				pids = append(pids, pid)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not written", f)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return pids
}

// The way nix runs a builder: in a session of its own, its output not on our pipes.
// Killing the command's process group leaves such a process running as an orphan.
func TestCancelledRunKillsChildrenInOtherSessionsToo(t *testing.T) {
	for _, tc := range []struct {
		name  string
		trap  string // the leader ignores SIGTERM: only the SIGKILL after the grace stops it
		grace time.Duration
	}{{"leader obeys SIGTERM", "", 5 * time.Second}, {"leader ignores SIGTERM", "trap '' TERM; ", 300 * time.Millisecond}} {
		t.Run(tc.name, func(t *testing.T) {
			old := killGrace
			killGrace = tc.grace
			t.Cleanup(func() { killGrace = old })
			dir := t.TempDir()
			sameGroup, ownSession := filepath.Join(dir, "same"), filepath.Join(dir, "session")
			script := tc.trap + `sleep 1000 & echo $! > "$1"
setsid sh -c 'echo $$ > "$0"; exec sleep 1001' "$2" </dev/null >/dev/null 2>&1 &
echo started; wait`
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				errc <- run(ctx, []string{"/bin/sh", "-c", script, "sh", sameGroup, ownSession}, func(Stream, string) {})
			}()
			pids := waitPids(t, sameGroup, ownSession)
			start := time.Now()
			cancel()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("a cancelled run reported success")
				}
			case <-time.After(tc.grace + 10*time.Second):
				t.Fatal("run did not return after cancel")
			}
			t.Logf("run returned %v after cancel", time.Since(start).Round(time.Millisecond))
			deadline := time.Now().Add(5 * time.Second)
			for _, pid := range pids {
				for alive(pid) {
					if time.Now().After(deadline) {
						t.Fatalf("process %d (a child of the cancelled command) still runs", pid)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}
}
