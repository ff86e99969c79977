package nixos

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

type lines struct {
	mu  sync.Mutex
	got []string
}

func (l *lines) add(s Stream, text string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prefix := map[Stream]string{Stdout: "out:", Stderr: "err:", Agent: "agent:"}[s]
	l.got = append(l.got, prefix+text)
}

func (l *lines) joined() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.got, "\n")
}

func TestToplevelAttrPathQuotesTheAttribute(t *testing.T) {
	got, err := ToplevelAttrPath("web.prod")
	if err != nil || got != `nixosConfigurations."web.prod".config.system.build.toplevel` {
		t.Errorf("got %q (%v)", got, err)
	}
	for _, bad := range []string{"", `a"b`, `a\b`, "a\nb"} {
		if _, err := ToplevelAttrPath(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRunStreamsBothStreamsAndReportsFailure(t *testing.T) {
	var l lines
	err := run(context.Background(), []string{"/bin/sh", "-c", "echo one; echo two >&2; printf 'no newline'; exit 3"}, l.add)
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("err = %v", err)
	}
	for _, want := range []string{"out:one", "err:two", "out:no newline", "agent:$ /bin/sh -c"} {
		if !strings.Contains(l.joined(), want) {
			t.Errorf("missing %q in\n%s", want, l.joined())
		}
	}
}

func TestGenerationReadsTheProfileLink(t *testing.T) {
	dir := t.TempDir()
	h := NewHost(Config{Profile: filepath.Join(dir, "system")})
	if g, err := h.Generation(); err != nil || g != 0 {
		t.Fatalf("no profile: %d %v", g, err)
	}
	os.Symlink("system-12-link", filepath.Join(dir, "system"))
	if g, err := h.Generation(); err != nil || g != 12 {
		t.Fatalf("generation %d %v, want 12", g, err)
	}
}

func TestFollowReadsEverythingWrittenBeforeDone(t *testing.T) {
	p := filepath.Join(t.TempDir(), "activation.log")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	var l lines
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() { defer close(finished); follow(p, done, l.add) }()
	f.WriteString("first\nsecond\n")
	f.WriteString("tail without newline")
	f.Close()
	close(done)
	<-finished
	if got, want := l.joined(), "out:first\nout:second\nout:tail without newline"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestNeedsRebootComparesKernelInitrdAndModules(t *testing.T) {
	mk := func(kernel, initrd string) string {
		dir := t.TempDir()
		for name, target := range map[string]string{"kernel": kernel, "initrd": initrd, "kernel-modules": "/modules-1"} {
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	booted := mk("/bzImage-1", "/initrd-1")
	if NeedsReboot(mk("/bzImage-1", "/initrd-1"), booted, "") {
		t.Error("same kernel and initrd: reboot wanted")
	}
	if !NeedsReboot(mk("/bzImage-2", "/initrd-1"), booted, "") {
		t.Error("new kernel: no reboot wanted")
	}
	if !NeedsReboot(mk("/bzImage-1", "/initrd-2"), booted, "") {
		t.Error("new initrd: no reboot wanted")
	}
	if NeedsReboot(booted, "", "") {
		t.Error("unknown booted system: reboot wanted")
	}
}

// After action boot the profile holds a system that neither runs nor booted: only a
// reboot runs it. After switch (profile = current) or test (profile = booted) not.
func TestNeedsRebootForAGenerationWaitingInTheProfile(t *testing.T) {
	mk := func() string {
		dir := t.TempDir()
		for _, name := range []string{"kernel", "initrd", "kernel-modules"} {
			if err := os.Symlink("/same-"+name, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	booted, next := mk(), mk()
	if !NeedsReboot(booted, booted, next) {
		t.Error("a boot generation waits in the profile: no reboot wanted")
	}
	if NeedsReboot(next, booted, next) {
		t.Error("switched to the profile's system (same kernel): reboot wanted")
	}
	if NeedsReboot(next, booted, booted) {
		t.Error("test action (profile = booted): reboot wanted")
	}
	if NeedsReboot(next, next, next) {
		t.Error("after the reboot: reboot wanted")
	}
}
