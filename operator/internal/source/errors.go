package source

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Error classes, for errors.Is. Every error this package returns wraps exactly one
// of them; the controller maps them to condition reasons (auth and invalid
// credentials are the user's to fix, network is retried).
var (
	// ErrAuth: the server refused the credentials, or the SSH host key did not match
	// known_hosts.
	ErrAuth = errors.New("authentication failed")
	// ErrNotFound: the repository does not exist (or the credentials cannot see it).
	ErrNotFound = errors.New("repository not found")
	// ErrNetwork: the server could not be reached or the transfer failed.
	ErrNetwork = errors.New("network error")
	// ErrRefNotFound: the repository has no such branch, tag or commit.
	ErrRefNotFound = errors.New("ref not found")
	// ErrInvalidCredentials: the Secret cannot be used for this URL.
	ErrInvalidCredentials = errors.New("invalid credentials")
	// ErrInvalidURL: the repository URL is malformed or of an unsupported protocol.
	ErrInvalidURL = errors.New("invalid repository URL")
)

// classify turns an error from go-git into one of the classes above. The go-git
// error itself is not kept in the chain (its text may quote the server, a URL with
// userinfo, or worse); only its text survives, scrubbed of every secret.
func classify(op, where string, err error, secrets []string) error {
	class := ErrNetwork
	var keyErr *knownhosts.KeyError
	switch {
	case errors.Is(err, ErrRefNotFound), errors.Is(err, ErrInvalidCredentials), errors.Is(err, ErrInvalidURL),
		errors.Is(err, ErrAuth), errors.Is(err, ErrNotFound), errors.Is(err, ErrNetwork):
		// Already ours (text produced by this package, free of secrets).
		return fmt.Errorf("%s %s: %w", op, where, err)
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed),
		errors.Is(err, transport.ErrInvalidAuthMethod):
		class = ErrAuth
	case errors.As(err, &keyErr):
		class = ErrAuth
		err = hostKeyError(keyErr)
	case isSSHAuthFailure(err):
		class = ErrAuth
	case errors.Is(err, transport.ErrRepositoryNotFound):
		class = ErrNotFound
	case errors.Is(err, transport.ErrEmptyRemoteRepository):
		class = ErrRefNotFound
	}
	// Servers end their messages with newlines, and go-git's text often repeats the class.
	text := strings.TrimSpace(scrub(err.Error(), secrets))
	text = strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(text, class.Error()), ":"))
	if text != "" {
		text = ": " + text
	}
	// Keep context errors visible to callers that stop on cancellation.
	for _, ctxErr := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, ctxErr) {
			return fmt.Errorf("%s %s: %w: %w%s", op, where, class, ctxErr, text)
		}
	}
	return fmt.Errorf("%s %s: %w%s", op, where, class, text)
}

func hostKeyError(e *knownhosts.KeyError) error {
	if len(e.Want) == 0 {
		return errors.New("server's host key is not in known_hosts")
	}
	return errors.New("server's host key does not match known_hosts (possible man-in-the-middle, or the host was reinstalled: update known_hosts)")
}

func isSSHAuthFailure(err error) bool {
	var sshErr *ssh.ServerAuthError
	if errors.As(err, &sshErr) {
		return true
	}
	return strings.Contains(err.Error(), "ssh: unable to authenticate")
}

// scrub replaces every occurrence of a secret in text, including its URL-escaped
// form (a password may travel in a URL's userinfo).
func scrub(text string, secrets []string) string {
	for _, s := range secrets {
		if s == "" {
			continue
		}
		text = strings.ReplaceAll(text, s, "[redacted]")
		if esc := urlEscape(s); esc != s {
			text = strings.ReplaceAll(text, esc, "[redacted]")
		}
	}
	return text
}
