package webhook

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"
)

// ErrInvalidRepoURL is returned by NormalizeRepoURL for a string that names no
// repository NIO could fetch.
var ErrInvalidRepoURL = errors.New("invalid repository URL")

// defaultPorts are dropped from the key so that `https://host:443/r` and
// `https://host/r` compare equal.
var defaultPorts = map[string]string{
	"http": "80", "https": "443", "git": "9418", "ssh": "22", "git+ssh": "22", "ssh+git": "22",
}

// scpLike is git's `[user@]host:path` form: no scheme, and no slash before the
// colon (otherwise git reads the string as a local path). The user part may hold no
// ':' so that `user:password@host:path` is refused rather than half-parsed.
var scpLike = regexp.MustCompile(`^(?:[^@/:\s]+@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([^\s]+)$`)

// passwordSCP is `user:password@host:path`, which git would read as host "user" and
// path "password@host:path"; it is refused so the password never reaches a key.
var passwordSCP = regexp.MustCompile(`^[^@/:]+:[^@/]*@[^/:]+:`)

// NormalizeRepoURL returns the key under which every spelling of one repository
// compares equal, so that a push payload's URLs can be matched against the
// NixosConfigurations' spec.gitRepo. The key is `host[:port]/path`:
//
//   - the scheme is dropped: a forge serves one repository under the same host and
//     path over https, ssh and git://, and the generic payload carries a single form
//     that need not be the one a configuration names. A false match costs one extra
//     re-resolve of the ref; a miss costs a poll interval;
//   - `ssh://git@host/path` and scp-like `git@host:path` are the same repository;
//   - user names and passwords are dropped, so the key never holds a credential and
//     may be logged;
//   - the host is lower-cased and the scheme's default port dropped;
//   - the path is cleaned (duplicate slashes, `.`/`..`), and a trailing slash and a
//     trailing `.git` are removed. Its case is kept: servers differ in whether paths
//     are case-sensitive, and a miss is the safe side.
//
// file:// URLs keep the prefix `file://`, as they name no host. The error never
// repeats the input, which may carry a credential.
func NormalizeRepoURL(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", fmt.Errorf("empty: %w", ErrInvalidRepoURL)
	}
	if strings.Contains(s, "://") {
		return normalizeURL(s)
	}
	m := scpLike.FindStringSubmatch(s)
	if m == nil || passwordSCP.MatchString(s) {
		return "", fmt.Errorf("neither a URL nor scp-like user@host:path: %w", ErrInvalidRepoURL)
	}
	p, err := cleanRepoPath(m[2])
	if err != nil {
		return "", err
	}
	return strings.ToLower(m[1]) + p, nil
}

func normalizeURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Error repeats the whole input; keep only what went wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", fmt.Errorf("%w: %v", ErrInvalidRepoURL, err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme == "file" {
		if h := strings.ToLower(u.Hostname()); h != "" && h != "localhost" {
			return "", fmt.Errorf("file URL naming a host: %w", ErrInvalidRepoURL)
		}
		p, err := cleanRepoPath(u.Path)
		if err != nil {
			return "", err
		}
		return "file://" + p, nil
	}
	def, ok := defaultPorts[scheme]
	if !ok {
		return "", fmt.Errorf("scheme %q not supported: %w", scheme, ErrInvalidRepoURL)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", fmt.Errorf("no host: %w", ErrInvalidRepoURL)
	}
	if port := u.Port(); port != "" && port != def {
		host = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	p, err := cleanRepoPath(u.Path)
	if err != nil {
		return "", err
	}
	return host + p, nil
}

// cleanRepoPath makes "o/r", "/o/r", "/o/r/", "/o/r.git" and "//o/./r.git/" one path.
// Home-relative scp paths (`host:o/r`) are read as absolute, as forges serve them.
func cleanRepoPath(p string) (string, error) {
	p = path.Clean("/" + p)
	p = strings.TrimSuffix(p, ".git")
	p = strings.TrimRight(p, "/")
	if p == "" {
		return "", fmt.Errorf("no repository path: %w", ErrInvalidRepoURL)
	}
	return p, nil
}

// RepoSet is the normalised URLs of one pushed repository. The Trigger uses it to
// pick the configurations whose spec.gitRepo names that repository.
type RepoSet map[string]struct{}

// NewRepoSet normalises urls; the ones that do not parse are left out.
func NewRepoSet(urls []string) RepoSet {
	s := make(RepoSet, len(urls))
	for _, u := range urls {
		if k, err := NormalizeRepoURL(u); err == nil {
			s[k] = struct{}{}
		}
	}
	return s
}

// Contains reports whether gitRepo normalises to one of the set's keys.
func (s RepoSet) Contains(gitRepo string) bool {
	k, err := NormalizeRepoURL(gitRepo)
	if err != nil {
		return false
	}
	_, ok := s[k]
	return ok
}

// Keys returns the set's keys, sorted; they hold no credential and may be logged.
func (s RepoSet) Keys() []string {
	return slices.Sorted(maps.Keys(s))
}
