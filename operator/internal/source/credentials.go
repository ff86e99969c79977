package source

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"os"
	"sort"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
)

// Secret keys read by ParseCredentials; the names are Flux's, so a Secret written for
// Flux's GitRepository works here unchanged.
const (
	KeyToken         = "token"
	KeyBearerToken   = "bearerToken"
	KeyUsername      = "username"
	KeyPassword      = "password"
	KeyIdentity      = "identity"
	KeySSHPrivateKey = "ssh-privatekey"
	KeyKnownHosts    = "known_hosts"
	KeyCACert        = "ca.crt"

	// DefaultTokenUser is the basic-auth user sent with a `token` when the Secret
	// names none; forges ignore it for access tokens, GitHub documents this one.
	DefaultTokenUser = "x-access-token"
)

type credentialKind int

const (
	credNone credentialKind = iota
	credBearer
	credBasic
	credSSH
)

// Credentials are what a Secret says about how to reach a repository. The zero value
// is anonymous access. Fields are unexported and String prints only the kind, so a
// Credentials can be logged or wrapped in an error without leaking the secret.
type Credentials struct {
	kind       credentialKind
	token      string
	username   string
	password   string // basic-auth password, or the passphrase of the SSH key
	sshKey     []byte
	knownHosts []byte
	caPEM      []byte
}

// ParseCredentials reads a Secret's data. Recognised keys: `token` (an access token
// sent as the password of HTTP basic auth, with `username` or else
// "x-access-token" as the user — what GitHub, GitLab, Gitea and Forgejo accept for
// Git over HTTPS), `bearerToken` (sent as `Authorization: Bearer`, for servers that
// take that), `username` + `password` (basic auth), `identity` or
// `ssh-privatekey` (PEM SSH key; `password` then is its passphrase) with
// `known_hosts`, and `ca.crt` (extra CA for HTTPS). Other keys are ignored. A Secret
// that mixes kinds, has a username without a password, or holds an unparsable key or
// CA is refused with ErrInvalidCredentials; the error never contains a value.
func ParseCredentials(data map[string][]byte) (Credentials, error) {
	var c Credentials
	accessToken := string(data[KeyToken])
	c.token = string(data[KeyBearerToken])
	c.username = string(data[KeyUsername])
	c.password = string(data[KeyPassword])
	if accessToken != "" {
		if c.token != "" || c.password != "" {
			return Credentials{}, fmt.Errorf("%w: secret has %q with %q or %q; keep one", ErrInvalidCredentials, KeyToken, KeyBearerToken, KeyPassword)
		}
		if c.username == "" {
			c.username = DefaultTokenUser
		}
		c.password = accessToken
	}
	c.sshKey = data[KeyIdentity]
	if len(c.sshKey) == 0 {
		c.sshKey = data[KeySSHPrivateKey]
	}
	c.knownHosts = data[KeyKnownHosts]
	c.caPEM = data[KeyCACert]

	switch {
	case len(c.sshKey) > 0:
		if c.token != "" || c.username != "" {
			return Credentials{}, fmt.Errorf("%w: secret mixes an SSH key with %s", ErrInvalidCredentials, mixedKeys(c))
		}
		if _, err := c.signer(); err != nil {
			return Credentials{}, fmt.Errorf("%w: SSH key in %q/%q does not parse (wrong format or passphrase)", ErrInvalidCredentials, KeyIdentity, KeySSHPrivateKey)
		}
		c.kind = credSSH
	case c.token != "": // bearerToken
		if c.username != "" || c.password != "" {
			return Credentials{}, fmt.Errorf("%w: secret has both a token and %s; keep one", ErrInvalidCredentials, mixedKeys(c))
		}
		c.kind = credBearer
	case c.username != "":
		if c.password == "" {
			return Credentials{}, fmt.Errorf("%w: %q is set but %q is empty", ErrInvalidCredentials, KeyUsername, KeyPassword)
		}
		c.kind = credBasic
	case c.password != "":
		return Credentials{}, fmt.Errorf("%w: %q is set without %q", ErrInvalidCredentials, KeyPassword, KeyUsername)
	}
	if len(c.caPEM) > 0 && !x509.NewCertPool().AppendCertsFromPEM(c.caPEM) {
		return Credentials{}, fmt.Errorf("%w: %q holds no PEM certificate", ErrInvalidCredentials, KeyCACert)
	}
	return c, nil
}

func mixedKeys(c Credentials) string {
	if c.token != "" {
		return "a token"
	}
	return "a username/password"
}

// String names the kind of credentials, never their value.
func (c Credentials) String() string {
	switch c.kind {
	case credBearer:
		return "bearer token"
	case credBasic:
		return "basic auth"
	case credSSH:
		return "ssh key"
	}
	return "anonymous"
}

// GoString keeps %#v from printing the fields.
func (c Credentials) GoString() string { return "source.Credentials{" + c.String() + "}" }

// fingerprint is an HMAC of every field under key, so equal credentials share a
// cache entry while the map key (and the on-disk directory derived from it) reveals
// nothing that helps guess a short password.
func (c Credentials) fingerprint(key []byte) string {
	m := hmac.New(sha256.New, key)
	fields := map[string][]byte{
		"kind": {byte(c.kind)}, "token": []byte(c.token), "username": []byte(c.username),
		"password": []byte(c.password), "sshKey": c.sshKey, "knownHosts": c.knownHosts, "ca": c.caPEM,
	}
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(m, "%s:%d:", n, len(fields[n]))
		m.Write(fields[n])
	}
	return hex.EncodeToString(m.Sum(nil))
}

// secrets are the strings error texts are scrubbed of.
func (c Credentials) secrets() []string {
	var out []string
	for _, s := range []string{c.token, c.password} {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (c Credentials) signer() (ssh.Signer, error) {
	s, err := ssh.ParsePrivateKey(c.sshKey)
	if _, ok := err.(*ssh.PassphraseMissingError); ok && c.password != "" {
		s, err = ssh.ParsePrivateKeyWithPassphrase(c.sshKey, []byte(c.password))
	}
	return s, err
}

// authFor turns the credentials into go-git's auth for ep, checking that they fit
// the URL's protocol. SSH always checks the host key against known_hosts: an SSH URL
// without known_hosts (or without a key) is refused, never trusted on first use.
func (c Credentials) authFor(ep *transport.Endpoint) (transport.AuthMethod, error) {
	switch ep.Protocol {
	case "http", "https":
		switch c.kind {
		case credBearer:
			return &githttp.TokenAuth{Token: c.token}, nil
		case credBasic:
			return &githttp.BasicAuth{Username: c.username, Password: c.password}, nil
		case credSSH:
			return nil, fmt.Errorf("%w: secret holds an SSH key but the URL is %s; use an ssh:// URL or a token", ErrInvalidCredentials, ep.Protocol)
		}
		return nil, nil
	case "ssh":
		if c.kind != credSSH {
			return nil, fmt.Errorf("%w: an SSH URL needs a secret with %q (or %q) and %q, got %s", ErrInvalidCredentials, KeyIdentity, KeySSHPrivateKey, KeyKnownHosts, c)
		}
		if len(bytes.TrimSpace(c.knownHosts)) == 0 {
			return nil, fmt.Errorf("%w: an SSH URL needs %q in the secret to check the server's host key", ErrInvalidCredentials, KeyKnownHosts)
		}
		signer, err := c.signer()
		if err != nil {
			return nil, fmt.Errorf("%w: SSH key does not parse", ErrInvalidCredentials)
		}
		cb, algos, err := knownHostsCallback(c.knownHosts, ep)
		if err != nil {
			return nil, err
		}
		user := ep.User
		if user == "" {
			user = "git"
		}
		return &gitssh.PublicKeys{User: user, Signer: signer, HostKeyCallbackHelper: gitssh.HostKeyCallbackHelper{
			HostKeyCallback: cb, HostKeyAlgorithms: algos,
		}}, nil
	case "file":
		// Local repositories need no credentials; whatever the secret holds is unused.
		return nil, nil
	}
	return nil, fmt.Errorf("%w: protocol %q (use https://, ssh://, git@host:path or file://)", ErrInvalidURL, ep.Protocol)
}

// knownHostsCallback builds the host key check from known_hosts content. The parser
// (skeema/knownhosts, which go-git uses) reads files only, so the content goes
// through a private temporary file removed before returning. The host key
// algorithms are narrowed to the ones known_hosts lists for the host, so the server
// is not asked for a key type we could not verify.
func knownHostsCallback(content []byte, ep *transport.Endpoint) (ssh.HostKeyCallback, []string, error) {
	f, err := os.CreateTemp("", "nio-known-hosts-*")
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	defer os.Remove(f.Name())
	_, werr := f.Write(content)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", werr)
	}
	db, err := gitssh.NewKnownHostsDb(f.Name())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %q does not parse", ErrInvalidCredentials, KeyKnownHosts)
	}
	port := ep.Port
	if port == 0 {
		port = 22
	}
	algos := db.HostKeyAlgorithms(fmt.Sprintf("%s:%d", ep.Host, port))
	if len(algos) == 0 {
		return nil, nil, fmt.Errorf("%w: %q has no key for host %s", ErrInvalidCredentials, KeyKnownHosts, ep.Host)
	}
	return db.HostKeyCallback(), algos, nil
}
