package source

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"

	"github.com/homystack/nio/testkit/gittest"
	"github.com/homystack/nio/testkit/sshtest"
	"golang.org/x/crypto/ssh"
)

func sshKeyPEM(t *testing.T) []byte {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block)
}

func hostKeyLine(t *testing.T, host string) []byte {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(fmt.Sprintf("%s %s", host, ssh.MarshalAuthorizedKey(sshPub)))
}

func TestSSHURLWithoutKnownHostsIsRefused(t *testing.T) {
	c := newCache(t, Options{})
	key := sshKeyPEM(t)
	for _, url := range []string{"ssh://git@git.example.com/org/fleet.git", "git@git.example.com:org/fleet.git"} {
		creds, err := ParseCredentials(map[string][]byte{"identity": key})
		if err != nil {
			t.Fatalf("ParseCredentials: %v", err)
		}
		_, err = c.Repo(url, creds)
		wantErr(t, err, ErrInvalidCredentials)
		if !strings.Contains(err.Error(), "known_hosts") {
			t.Fatalf("error does not say what is missing: %v", err)
		}

		// No secret at all: there is nothing to authenticate or verify with.
		_, err = c.Repo(url, Credentials{})
		wantErr(t, err, ErrInvalidCredentials)

		// known_hosts that does not list this host is as good as none.
		other, _ := ParseCredentials(map[string][]byte{"ssh-privatekey": key, "known_hosts": hostKeyLine(t, "elsewhere.example.com")})
		_, err = c.Repo(url, other)
		wantErr(t, err, ErrInvalidCredentials)

		good, err := ParseCredentials(map[string][]byte{"ssh-privatekey": key, "known_hosts": hostKeyLine(t, "git.example.com")})
		if err != nil {
			t.Fatalf("ParseCredentials: %v", err)
		}
		if _, err := c.Repo(url, good); err != nil {
			t.Fatalf("SSH URL with key and matching known_hosts refused: %v", err)
		}
	}
}

func TestCredentialsOfTheWrongKindForTheURLAreRefused(t *testing.T) {
	c := newCache(t, Options{})
	sshCreds, err := ParseCredentials(map[string][]byte{"identity": sshKeyPEM(t), "known_hosts": hostKeyLine(t, "h")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Repo("https://git.example.com/fleet.git", sshCreds)
	wantErr(t, err, ErrInvalidCredentials)

	token, _ := ParseCredentials(map[string][]byte{"token": []byte("sekrit-token")})
	_, err = c.Repo("ssh://git@git.example.com/fleet.git", token)
	wantErr(t, err, ErrInvalidCredentials, "sekrit-token")

	for _, url := range []string{"git://git.example.com/fleet.git", "ftp://x/y", "https://", "not a url"} {
		_, err = c.Repo(url, Credentials{})
		wantErr(t, err, ErrInvalidURL)
	}
}

func TestParseCredentialsRefusesBadSecretsWithoutQuotingThem(t *testing.T) {
	for name, data := range map[string]map[string][]byte{
		"token and password":   {"token": []byte("v-secret-1"), "username": []byte("u"), "password": []byte("v-secret-2")},
		"token and bearer":     {"token": []byte("v-secret-1"), "bearerToken": []byte("v-secret-2")},
		"username only":        {"username": []byte("v-secret-1")},
		"password only":        {"password": []byte("v-secret-1")},
		"garbage key":          {"identity": []byte("v-secret-1")},
		"key and token":        {"identity": []byte("v-secret-1"), "token": []byte("v-secret-2")},
		"ca that is not a PEM": {"token": []byte("v-secret-1"), "ca.crt": []byte("v-secret-2")},
	} {
		_, err := ParseCredentials(data)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		wantErr(t, err, ErrInvalidCredentials, "v-secret-1", "v-secret-2")
	}

	for name, tc := range map[string]struct {
		data map[string][]byte
		want string
	}{
		"none":        {nil, "anonymous"},
		"token":       {map[string][]byte{"token": []byte("x")}, "basic auth"},
		"user+token":  {map[string][]byte{"token": []byte("x"), "username": []byte("oauth2")}, "basic auth"},
		"bearerToken": {map[string][]byte{"bearerToken": []byte("x")}, "bearer token"},
		"basic":       {map[string][]byte{"username": []byte("u"), "password": []byte("p")}, "basic auth"},
		"unknown key": {map[string][]byte{"other": []byte("x")}, "anonymous"},
	} {
		c, err := ParseCredentials(tc.data)
		if err != nil || c.String() != tc.want {
			t.Errorf("%s: %v %v, want %s", name, c, err, tc.want)
		}
	}
}

func TestCredentialsNeverPrintTheirValues(t *testing.T) {
	c, err := ParseCredentials(map[string][]byte{"username": []byte("u"), "password": []byte("p4ssw0rd-xyz")})
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(format, c); strings.Contains(s, "p4ssw0rd-xyz") {
			t.Fatalf("%s prints the password: %s", format, s)
		}
	}
}

func TestSSHFetchChecksHostKeyAgainstKnownHosts(t *testing.T) {
	sshd := sshtest.Start(t, sshtest.Options{})
	repo := gittest.NewLocalRepo(t, "fleet")
	want := repo.CommitFiles(t, map[string]string{"flake.nix": "{ }"}, "init")
	url := fmt.Sprintf("ssh://%s@%s%s", sshd.User, sshd.Addr(), repo.Dir)
	knownHosts := func() []byte {
		return []byte(fmt.Sprintf("[%s]:%d %s\n", sshd.Host, sshd.Port, sshd.HostKeyAuthorized()))
	}
	secret := map[string][]byte{"identity": sshd.ClientKeyPEM, "known_hosts": knownHosts()}

	c := newCache(t, Options{})
	r := openRepo(t, c, url, secret)
	if got := resolve(t, r, "main"); got != want {
		t.Fatalf("Resolve over SSH = %s, want %s", got, want)
	}
	if string(tree(t, r, want)["flake.nix"].Content) != "{ }" {
		t.Fatalf("tree over SSH")
	}

	// The host now presents another key: refused as an auth error, not trusted.
	sshd.RotateHostKey(t)
	r.Invalidate()
	_, err := r.Resolve(ctx(t), "main")
	wantErr(t, err, ErrAuth)
	if !strings.Contains(err.Error(), "known_hosts") {
		t.Fatalf("host key error does not point at known_hosts: %v", err)
	}

	// A key the server does not authorize is an auth error too.
	secret = map[string][]byte{"identity": sshKeyPEM(t), "known_hosts": knownHosts()}
	_, err = openRepo(t, c, url, secret).Resolve(ctx(t), "main")
	wantErr(t, err, ErrAuth)
}
