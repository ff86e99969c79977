package webhook

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNormalizeRepoURL(t *testing.T) {
	cases := []struct {
		in, want string
	}{
		// One repository, every spelling a forge or a user writes.
		{"https://github.com/homystack/fleet.git", "github.com/homystack/fleet"},
		{"https://github.com/homystack/fleet", "github.com/homystack/fleet"},
		{"https://github.com/homystack/fleet/", "github.com/homystack/fleet"},
		{"https://github.com/homystack/fleet.git/", "github.com/homystack/fleet"},
		{"HTTPS://GitHub.COM/homystack/fleet", "github.com/homystack/fleet"},
		{"https://github.com:443/homystack/fleet", "github.com/homystack/fleet"},
		{"http://github.com:80/homystack/fleet", "github.com/homystack/fleet"},
		{"git://github.com/homystack/fleet.git", "github.com/homystack/fleet"},
		{"git://github.com:9418/homystack/fleet.git", "github.com/homystack/fleet"},
		{"ssh://git@github.com/homystack/fleet.git", "github.com/homystack/fleet"},
		{"ssh://git@github.com:22/homystack/fleet.git", "github.com/homystack/fleet"},
		{"git+ssh://git@github.com/homystack/fleet.git", "github.com/homystack/fleet"},
		{"git@github.com:homystack/fleet.git", "github.com/homystack/fleet"},
		{"git@GITHUB.com:homystack/fleet", "github.com/homystack/fleet"},
		{"github.com:homystack/fleet.git", "github.com/homystack/fleet"},
		{"git@github.com:/homystack/fleet.git", "github.com/homystack/fleet"},
		{"https://github.com//homystack/./fleet.git", "github.com/homystack/fleet"},
		{"  https://github.com/homystack/fleet\n", "github.com/homystack/fleet"},
		// Credentials are dropped: the key may be logged.
		{"https://x-access-token:ghs_SECRET@github.com/homystack/fleet.git", "github.com/homystack/fleet"},
		{"https://oauth2:glpat-SECRET@gitlab.example.com/infra/fleet", "gitlab.example.com/infra/fleet"},
		{"ssh://deploy@gitlab.example.com/infra/fleet.git", "gitlab.example.com/infra/fleet"},
		// A port other than the default is a different server.
		{"ssh://git@forgejo.example.net:2222/ops/nixos.git", "forgejo.example.net:2222/ops/nixos"},
		{"http://localhost:3000/ops/nixos.git", "localhost:3000/ops/nixos"},
		// Path case is kept; subgroups stay apart.
		{"https://gitlab.example.com/Infra/Fleet.git", "gitlab.example.com/Infra/Fleet"},
		{"https://gitlab.example.com/infra/fleet/staging.git", "gitlab.example.com/infra/fleet/staging"},
		// Percent-encoding is decoded.
		{"https://git.example.com/my%20repo.git", "git.example.com/my repo"},
		// IPv6 hosts keep their brackets in the key.
		{"ssh://git@[2001:db8::1]/fleet.git", "[2001:db8::1]/fleet"},
		{"ssh://git@[2001:db8::1]:2222/fleet.git", "[2001:db8::1]:2222/fleet"},
		{"git@[2001:db8::1]:fleet.git", "[2001:db8::1]/fleet"},
		// Only the literal suffix .git goes.
		{"https://github.com/nix-community/nixos-anywhere.github.io", "github.com/nix-community/nixos-anywhere.github.io"},
		{"https://example.com/dotgit.git.git", "example.com/dotgit.git"},
		// Local repositories have no host.
		{"file:///srv/git/fleet.git", "file:///srv/git/fleet"},
		{"file://localhost/srv/git/fleet/", "file:///srv/git/fleet"},
	}
	for _, c := range cases {
		got, err := NormalizeRepoURL(c.in)
		if err != nil || got != c.want {
			t.Errorf("NormalizeRepoURL(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}

func TestNormalizeRepoURLRefusesWhatNamesNoRepository(t *testing.T) {
	for _, in := range []string{
		"",
		"   ",
		"/srv/git/fleet.git",           // a bare path: file:// must say so
		"fleet.git",                    // no host
		"https://github.com",           // no path
		"https://github.com/",          // no path
		"https://github.com/.git",      // no path once .git goes
		"https:///homystack/fleet.git", // no host
		"ftp://example.com/fleet.git",  // not a git transport
		"file://nas/srv/git/fleet.git", // a host on a file URL
		"https://exa mple.com/fleet",   // not a URL
		"user:p4ss@host:fleet.git",     // not scp-like: a colon in the user
		"git@host:",                    // no path
	} {
		if got, err := NormalizeRepoURL(in); err == nil || !errors.Is(err, ErrInvalidRepoURL) {
			t.Errorf("NormalizeRepoURL(%q) = %q, %v; want ErrInvalidRepoURL", in, got, err)
		}
	}
}

func TestNormalizeRepoURLErrorHoldsNoCredential(t *testing.T) {
	for _, in := range []string{
		"https://user:hunter2@exa mple.com/fleet",
		"https://user:hunter2@example.com:port/fleet",
		"ftp://user:hunter2@example.com/fleet",
		"user:hunter2@host:fleet.git",
	} {
		_, err := NormalizeRepoURL(in)
		if err == nil {
			t.Fatalf("NormalizeRepoURL(%q) succeeded", in)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error for %q repeats the password: %v", in, err)
		}
	}
}

func TestRepoSet(t *testing.T) {
	set := NewRepoSet([]string{
		"https://forgejo.example.net/ops/nixos.git",
		"ssh://git@forgejo.example.net:2222/ops/nixos.git",
		"https://forgejo.example.net/ops/nixos",
		"not a url", // left out, not fatal
	})
	if got, want := set.Keys(), []string{"forgejo.example.net/ops/nixos", "forgejo.example.net:2222/ops/nixos"}; !slices.Equal(got, want) {
		t.Fatalf("keys %v, want %v", got, want)
	}
	for repo, want := range map[string]bool{
		"git@forgejo.example.net:ops/nixos.git":           true,
		"https://token:x@FORGEJO.example.net/ops/nixos/":  true,
		"ssh://git@forgejo.example.net:2222/ops/nixos":    true,
		"ssh://git@forgejo.example.net:2223/ops/nixos":    false,
		"https://forgejo.example.net/ops/nixos-hardware":  false,
		"https://forgejo.example.net/other/nixos":         false,
		"https://codeberg.org/ops/nixos.git":              false,
		"not a url":                                       false,
		"":                                                false,
		"https://forgejo.example.net/ops/nixos/extra.git": false,
	} {
		if got := set.Contains(repo); got != want {
			t.Errorf("Contains(%q) = %v, want %v", repo, got, want)
		}
	}
}
