// Package testkit holds the real parts the tests of every module start: a Nix store
// configured for offline fixture flakes (nixtest), a git http-backend server
// (gittest), an OpenSSH sshd host (sshtest), a throwaway CA (certtest), a real
// nixos-facter report (facterfixture) and the nio-agent systemd unit as the NixOS
// module makes it (agentunit), for hosts that run real systemd. It is a module of its
// own so the agent's and the operator's tests share one copy.
package testkit
