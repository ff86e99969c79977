package sshtest_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/homystack/nio/testkit/sshtest"
)

func session(t *testing.T, s *sshtest.Server, cmd string) string {
	t.Helper()
	c, err := ssh.Dial("tcp", s.Addr(), s.ClientConfig())
	if err != nil {
		t.Fatalf("dial %s: %v", s.Addr(), err)
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("%s: %v: %s", cmd, err, out)
	}
	return string(out)
}

func TestSessionSeesStandInsFirstOnPath(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	s.WriteStandIn(t, "nixos-rebuild", "#!/bin/sh\necho stand-in \"$@\"\n")
	if got := session(t, s, "nixos-rebuild switch"); got != "stand-in switch\n" {
		t.Fatalf("stand-in output = %q", got)
	}
	if os.Geteuid() == 0 && !s.InNamespace {
		t.Fatal("as root, sshd must run in a network namespace of its own")
	}
}

func TestNonRootLoginUser(t *testing.T) {
	if os.Geteuid() != 0 {
		// Without root there is no second user to be; the default user is covered above.
		t.Log("not root: logging in as the current user only")
		return
	}
	s := sshtest.Start(t, sshtest.Options{User: "deployer"})
	if got := strings.TrimSpace(session(t, s, "id -un")); got != "deployer" {
		t.Fatalf("logged in as %q, want deployer", got)
	}
	// The user exists only in sshd's mount namespace.
	if err := exec.Command("id", "deployer").Run(); err == nil {
		t.Fatal("the sshtest user leaked into the machine's /etc/passwd")
	}
}

func TestRotatedHostKeyIsPresented(t *testing.T) {
	s := sshtest.Start(t, sshtest.Options{})
	old := s.HostKey()
	cfg := s.ClientConfig() // pins the old key
	s.RotateHostKey(t)
	if string(old.Marshal()) == string(s.HostKey().Marshal()) {
		t.Fatal("rotation kept the host key")
	}
	_, err := ssh.Dial("tcp", s.Addr(), cfg)
	if err == nil {
		t.Fatal("dial with the old pinned key succeeded after rotation")
	}
	if !strings.Contains(err.Error(), "host key mismatch") {
		t.Fatalf("dial error = %v, want a host key mismatch", err)
	}
	session(t, s, "true") // the new key works
}
