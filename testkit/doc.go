// Package testkit holds the real parts the tests of every module start: a Nix store
// configured for offline fixture flakes (nixtest), a git http-backend server
// (gittest), an OpenSSH sshd host (sshtest) and a throwaway CA (certtest). It is a
// module of its own so the agent's and the operator's tests share one copy.
package testkit
