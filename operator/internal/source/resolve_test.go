package source

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/homystack/nio/testkit/gittest"
)

func TestResolveBranchTagAndCommitOverBasicBearerAndFile(t *testing.T) {
	for _, mk := range []func(*testing.T) gitServer{basicServer, bearerServer, fileServer} {
		s := mk(t)
		t.Run(s.name, func(t *testing.T) {
			repo := s.newRepo(t, "fleet")
			first := repo.CommitFiles(t, map[string]string{"flake.nix": "{ outputs = { self }: { }; }", "hosts/a.nix": "a"}, "first")
			second := repo.CommitFiles(t, map[string]string{"flake.nix": "{ outputs = { self }: { v = 2; }; }"}, "second")
			tagObject := repo.AnnotatedTag(t, "v1.0.0", first, "release")
			repo.Tag(t, "light", second)
			repo.CommitFilesOn(t, "staging", map[string]string{"x": "y"}, "other branch")

			r := openRepo(t, newCache(t, Options{}), repo.URL(), s.secret)
			for ref, want := range map[string]string{
				"main": second, "refs/heads/main": second, "HEAD": second,
				"v1.0.0": first, "refs/tags/v1.0.0": first, "light": second,
				"staging": repo.Head(t, "staging"),
			} {
				if got := resolve(t, r, ref); got != want {
					t.Errorf("Resolve(%q) = %s, want %s", ref, got, want)
				}
			}
			if resolve(t, r, "v1.0.0") == tagObject {
				t.Fatalf("annotated tag resolved to the tag object, not its commit")
			}

			if got := resolve(t, r, first); got != first {
				t.Fatalf("Resolve(commit) = %s, want %s", got, first)
			}
			files := tree(t, r, first)
			if string(files["hosts/a.nix"].Content) != "a" || len(files) != 2 {
				t.Fatalf("tree of first commit: %v", files)
			}
			// Once fetched with these credentials, a pinned commit needs no listing.
			var before int
			if s.srv != nil {
				before = s.srv.Count(gittest.LsRemote)
			}
			if got := resolve(t, r, first); got != first {
				t.Fatalf("Resolve(commit) = %s, want %s", got, first)
			}
			if s.srv != nil && s.srv.Count(gittest.LsRemote) != before {
				t.Fatalf("resolving a commit already fetched asked the server")
			}
		})
	}
}

func TestWrongCredentialsAreAuthErrorsThatDoNotQuoteThem(t *testing.T) {
	bearer := bearerServer(t)
	repo := bearer.newRepo(t, "private")
	commit := repo.CommitFiles(t, map[string]string{"a": "b"}, "init")

	const wrongToken = "tok-WRONG-secret-value-42"
	r := openRepo(t, newCache(t, Options{}), repo.URL(), map[string][]byte{"bearerToken": []byte(wrongToken)})
	_, err := r.Resolve(ctx(t), "main")
	wantErr(t, err, ErrAuth, wrongToken)
	// A pinned commit needs no ls-remote, but its fetch is refused the same way.
	_, err = r.Tree(ctx(t), commit)
	wantErr(t, err, ErrAuth, wrongToken)

	noCreds := openRepo(t, newCache(t, Options{}), repo.URL(), nil)
	_, err = noCreds.Resolve(ctx(t), "main")
	wantErr(t, err, ErrAuth)

	basic := basicServer(t)
	brepo := basic.newRepo(t, "private")
	brepo.CommitFiles(t, map[string]string{"a": "b"}, "init")
	const wrongPassword = "pw-WRONG/with:odd@chars"
	br := openRepo(t, newCache(t, Options{}), brepo.URL(), map[string][]byte{"username": []byte("fleet"), "password": []byte(wrongPassword)})
	_, err = br.Resolve(ctx(t), "main")
	wantErr(t, err, ErrAuth, wrongPassword, urlEscape(wrongPassword))
}

func TestConcurrentResolvesOfOneRepoMakeOneLsRemote(t *testing.T) {
	const callers = 20
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	srv := gittest.NewServer(t, gittest.Options{Auth: gittest.AuthBearer, Token: "t0ken",
		BeforeRequest: func(kind gittest.Kind, _ *http.Request) {
			if kind == gittest.LsRemote {
				once.Do(func() { close(entered) })
				<-release
			}
		}})
	repo := srv.NewRepo(t, "fleet")
	want := repo.CommitFiles(t, map[string]string{"flake.nix": "{}"}, "init")

	c := newCache(t, Options{})
	var joined sync.WaitGroup
	joined.Add(callers - 1)
	c.onJoin = joined.Done

	creds, err := ParseCredentials(map[string][]byte{"bearerToken": []byte("t0ken")})
	if err != nil {
		t.Fatal(err)
	}
	resolveCtx := ctx(t)
	results := make(chan string, callers)
	errs := make(chan error, callers)
	for range callers {
		go func() {
			// Each caller opens the repo itself, as each configuration's reconcile does.
			r, err := c.Repo(repo.URL(), creds)
			var hash string
			if err == nil {
				hash, err = r.Resolve(resolveCtx, "main")
			}
			results <- hash
			errs <- err
		}()
	}
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(open) // the server's Close waits for held requests
	allJoined := make(chan struct{})
	go func() { joined.Wait(); close(allJoined) }()
	<-entered // one listing reached the server…
	select {
	case <-allJoined: // …and every other caller is waiting on it
	case <-time.After(20 * time.Second):
		t.Fatalf("the other callers did not join the listing in flight (stats %+v)", c.Stats())
	}
	open()
	for range callers {
		if err := <-errs; err != nil {
			t.Fatalf("Resolve: %v", err)
		}
		if got := <-results; got != want {
			t.Fatalf("Resolve = %s, want %s", got, want)
		}
	}
	if n := srv.Count(gittest.LsRemote); n != 1 {
		t.Fatalf("server saw %d ls-remotes for %d concurrent resolves, want 1", n, callers)
	}
	if st := c.Stats(); st.LsRemotes != 1 || st.ResolvesShared != callers-1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMinIntervalReusesListingUntilInvalidated(t *testing.T) {
	srv := gittest.NewServer(t, gittest.Options{})
	repo := srv.NewRepo(t, "fleet")
	first := repo.CommitFiles(t, map[string]string{"a": "1"}, "one")
	r := openRepo(t, newCache(t, Options{MinInterval: time.Hour}), repo.URL(), nil)

	for range 5 {
		resolve(t, r, "main")
	}
	if n := srv.Count(gittest.LsRemote); n != 1 {
		t.Fatalf("5 resolves within MinInterval made %d ls-remotes, want 1", n)
	}
	second := repo.CommitFiles(t, map[string]string{"a": "2"}, "two")
	if got := resolve(t, r, "main"); got != first {
		t.Fatalf("within MinInterval Resolve = %s, want the cached %s", got, first)
	}
	r.Invalidate()
	if got := resolve(t, r, "main"); got != second {
		t.Fatalf("after Invalidate Resolve = %s, want %s", got, second)
	}
	if n := srv.Count(gittest.LsRemote); n != 2 {
		t.Fatalf("ls-remotes = %d, want 2", n)
	}
}

func TestNewCommitIsPickedUpAndOnlyThenFetched(t *testing.T) {
	s := basicServer(t)
	repo := s.newRepo(t, "fleet")
	zero := repo.CommitFiles(t, map[string]string{"flake.nix": "zero"}, "zero")
	first := repo.CommitFiles(t, map[string]string{"flake.nix": "one"}, "one")
	dir := t.TempDir()
	c := newCache(t, Options{Dir: dir})
	r := openRepo(t, c, repo.URL(), s.secret)

	if got := resolve(t, r, "main"); got != first {
		t.Fatalf("Resolve = %s, want %s", got, first)
	}
	if string(tree(t, r, first)["flake.nix"].Content) != "one" {
		t.Fatalf("wrong content at first commit")
	}
	fetches := s.srv.Count(gittest.Fetch)
	if fetches != 1 {
		t.Fatalf("first Tree made %d fetches, want 1", fetches)
	}
	if r.Has(zero) {
		t.Fatalf("fetch was not shallow: the parent commit came along")
	}
	// Polling again with nothing new: no fetch.
	for range 3 {
		if got := resolve(t, r, "main"); got != first {
			t.Fatalf("Resolve = %s, want %s", got, first)
		}
		tree(t, r, first)
	}
	if n := s.srv.Count(gittest.Fetch); n != fetches {
		t.Fatalf("unchanged commit fetched again: %d fetches, want %d", n, fetches)
	}

	second := repo.CommitFiles(t, map[string]string{"flake.nix": "two", "new.nix": "n"}, "two")
	if got := resolve(t, r, "main"); got != second {
		t.Fatalf("new commit not picked up: Resolve = %s, want %s", got, second)
	}
	files := tree(t, r, second)
	if string(files["flake.nix"].Content) != "two" || string(files["new.nix"].Content) != "n" {
		t.Fatalf("tree of second commit: %v", files)
	}
	if n := s.srv.Count(gittest.Fetch); n != fetches+1 {
		t.Fatalf("new commit made %d fetches, want 1 (depth 1 on the ref)", n-fetches)
	}
	if string(tree(t, r, first)["flake.nix"].Content) != "one" {
		t.Fatalf("first commit lost after fetching the second")
	}

	// A restarted operator reuses the on-disk cache: no fetch for held commits.
	r2 := openRepo(t, newCache(t, Options{Dir: dir}), repo.URL(), s.secret)
	if !r2.Has(second) {
		t.Fatalf("on-disk cache does not hold %s after restart", second)
	}
	tree(t, r2, second)
	if n := s.srv.Count(gittest.Fetch); n != fetches+1 {
		t.Fatalf("restarted cache fetched again")
	}
}

func TestPinnedCommitBehindTheTipIsFetched(t *testing.T) {
	for _, allow := range []bool{false, true} {
		srv := gittest.NewServer(t, gittest.Options{AllowSHA1InWant: allow})
		repo := srv.NewRepo(t, "fleet")
		old := repo.CommitFiles(t, map[string]string{"v": "old"}, "old")
		repo.CommitFiles(t, map[string]string{"v": "new"}, "new")
		r := openRepo(t, newCache(t, Options{}), repo.URL(), nil)
		if got := string(tree(t, r, old)["v"].Content); got != "old" {
			t.Fatalf("allowSHA1InWant=%v: content %q at pinned commit", allow, got)
		}
		if allow && srv.Count(gittest.Fetch) != 1 {
			t.Fatalf("server allowing wants by hash: %d fetches, want 1", srv.Count(gittest.Fetch))
		}
	}
}

func TestTreeKeepsModesAndSymlinksAndSkipsGitDir(t *testing.T) {
	src := t.TempDir()
	writeFile(t, filepath.Join(src, "bin", "deploy"), "#!/bin/sh\n", 0o755)
	writeFile(t, filepath.Join(src, "hosts", "a.nix"), "{ }", 0o644)
	if err := os.Symlink("hosts/a.nix", filepath.Join(src, "default.nix")); err != nil {
		t.Fatal(err)
	}
	repo := gittest.NewLocalRepo(t, "modes")
	commit := repo.CommitDir(t, src, "modes")
	r := openRepo(t, newCache(t, Options{}), repo.URL(), nil)
	files := tree(t, r, commit)
	if files["bin/deploy"].Mode != Executable || files["hosts/a.nix"].Mode != Regular {
		t.Fatalf("modes: %v", files)
	}
	if l := files["default.nix"]; l.Mode != Symlink || string(l.Content) != "hosts/a.nix" {
		t.Fatalf("symlink: %+v", l)
	}
	if len(files) != 3 {
		t.Fatalf("unexpected entries: %v", files)
	}
}

func TestMissingRefCommitAndRepositoryAreClassified(t *testing.T) {
	srv := gittest.NewServer(t, gittest.Options{})
	repo := srv.NewRepo(t, "fleet")
	repo.CommitFiles(t, map[string]string{"a": "b"}, "init")
	c := newCache(t, Options{})
	r := openRepo(t, c, repo.URL(), nil)

	_, err := r.Resolve(ctx(t), "no-such-branch")
	wantErr(t, err, ErrRefNotFound)
	_, err = r.Tree(ctx(t), "0123456789abcdef0123456789abcdef01234567")
	wantErr(t, err, ErrRefNotFound)

	empty := openRepo(t, c, srv.NewRepo(t, "empty").URL(), nil)
	_, err = empty.Resolve(ctx(t), "main")
	wantErr(t, err, ErrRefNotFound)

	_, err = openRepo(t, c, srv.RepoURL("missing"), nil).Resolve(ctx(t), "main")
	wantErr(t, err, ErrNotFound)
	_, err = openRepo(t, c, "file://"+filepath.Join(t.TempDir(), "missing.git"), nil).Resolve(ctx(t), "main")
	wantErr(t, err, ErrNotFound)
}

func TestUnreachableServerIsNetworkError(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	url := dead.URL + "/fleet.git"
	dead.Close()
	_, err := openRepo(t, newCache(t, Options{}), url, nil).Resolve(ctx(t), "main")
	wantErr(t, err, ErrNetwork)
}

func TestHTTPSNeedsTheSecretsCA(t *testing.T) {
	srv := gittest.NewServer(t, gittest.Options{TLS: true, Auth: gittest.AuthBearer, Token: "tls-token"})
	repo := srv.NewRepo(t, "fleet")
	want := repo.CommitFiles(t, map[string]string{"a": "b"}, "init")
	c := newCache(t, Options{})

	_, err := openRepo(t, c, repo.URL(), map[string][]byte{"bearerToken": []byte("tls-token")}).Resolve(ctx(t), "main")
	wantErr(t, err, ErrNetwork, "tls-token")

	r := openRepo(t, c, repo.URL(), map[string][]byte{"bearerToken": []byte("tls-token"), "ca.crt": srv.CAPEM})
	if got := resolve(t, r, "main"); got != want {
		t.Fatalf("Resolve over TLS = %s, want %s", got, want)
	}
	if string(tree(t, r, want)["a"].Content) != "b" {
		t.Fatalf("tree over TLS")
	}
}

func TestCacheSharesOneEntryPerURLAndCredentials(t *testing.T) {
	c := newCache(t, Options{})
	url := "https://git.example.com/fleet.git"
	a := openRepo(t, c, url, map[string][]byte{"token": []byte("one")})
	b := openRepo(t, c, url, map[string][]byte{"token": []byte("one")})
	other := openRepo(t, c, url, map[string][]byte{"token": []byte("two")})
	anon := openRepo(t, c, url, nil)
	if a != b {
		t.Fatalf("same URL and credentials gave two entries")
	}
	if a == other || a == anon || other == anon {
		t.Fatalf("different credentials share an entry")
	}
}

func TestConcurrentTreeReadsOfANewCommitFetchOnce(t *testing.T) {
	srv := gittest.NewServer(t, gittest.Options{})
	repo := srv.NewRepo(t, "fleet")
	commit := repo.CommitFiles(t, map[string]string{"flake.nix": "{ }"}, "init")
	c := newCache(t, Options{})
	r := openRepo(t, c, repo.URL(), nil)
	resolve(t, r, "main")

	treeCtx := ctx(t)
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Go(func() {
			_, err := r.Tree(treeCtx, commit)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Tree: %v", err)
		}
	}
	if n := srv.Count(gittest.Fetch); n != 1 {
		t.Fatalf("10 concurrent reads of one new commit made %d fetches, want 1", n)
	}
}

func TestRevisionNamesRefAndCommit(t *testing.T) {
	const commit = "0123456789abcdef0123456789abcdef01234567"
	for ref, want := range map[string]string{
		"main":            "main@sha1:" + commit,
		"refs/heads/main": "main@sha1:" + commit,
		"refs/tags/v1":    "v1@sha1:" + commit,
		commit:            "sha1:" + commit,
	} {
		if got := Revision(ref, commit); got != want {
			t.Errorf("Revision(%q) = %q, want %q", ref, got, want)
		}
	}
}

func TestInvalidateDuringAListingIsNotAnsweredByIt(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var first sync.Once
	srv := gittest.NewServer(t, gittest.Options{BeforeRequest: func(kind gittest.Kind, _ *http.Request) {
		if kind != gittest.LsRemote {
			return
		}
		held := false
		first.Do(func() { held = true; close(entered) })
		if held {
			<-release
		}
	}})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	repo := srv.NewRepo(t, "fleet")
	repo.CommitFiles(t, map[string]string{"v": "old"}, "old")
	r := openRepo(t, newCache(t, Options{MinInterval: time.Hour}), repo.URL(), nil)

	stale := make(chan string, 1)
	staleCtx := ctx(t)
	go func() {
		hash, _ := r.Resolve(staleCtx, "main")
		stale <- hash
	}()
	<-entered // the listing has reached the server, before the push
	pushed := repo.CommitFiles(t, map[string]string{"v": "new"}, "push")
	r.Invalidate() // the webhook
	if got := resolve(t, r, "main"); got != pushed {
		t.Fatalf("Resolve after Invalidate joined the older listing: %s, want %s", got, pushed)
	}
	releaseOnce.Do(func() { close(release) })
	// The held listing reads the refs only once released, so what it answers says
	// nothing here; what matters is that it is not cached over the newer answer.
	<-stale
	if got := resolve(t, r, "main"); got != pushed {
		t.Fatalf("the older listing was cached over the newer one: %s", got)
	}
	if n := srv.Count(gittest.LsRemote); n != 2 {
		t.Fatalf("ls-remotes = %d, want 2", n)
	}
}

// TestAccessTokenIsBasicAuthPassword: a `token` (the usage guide's
// --from-literal=token=...) travels the way forges accept access tokens for Git over
// HTTPS: as the basic-auth password, with user x-access-token or the Secret's username.
func TestAccessTokenIsBasicAuthPassword(t *testing.T) {
	for _, user := range []string{"", "oauth2"} {
		want := user
		if want == "" {
			want = DefaultTokenUser
		}
		srv := gittest.NewServer(t, gittest.Options{Auth: gittest.AuthBasic, Username: want, Password: "glpat-0123456789"})
		repo := srv.NewRepo(t, "fleet")
		head := repo.CommitFiles(t, map[string]string{"a": "b"}, "init")
		secret := map[string][]byte{"token": []byte("glpat-0123456789")}
		if user != "" {
			secret["username"] = []byte(user)
		}
		if got := resolve(t, openRepo(t, newCache(t, Options{}), repo.URL(), secret), "main"); got != head {
			t.Errorf("user %q: resolved %s, want %s", user, got, head)
		}
	}
}

// TestPinnedCommitIsCheckedWithTheRepositorysOwnCredentials: a full commit hash is
// not proof of access. A Repo reached without the token must not resolve a private
// repository's commit, nor read its tree, even after another Repo with the token
// fetched it.
func TestPinnedCommitIsCheckedWithTheRepositorysOwnCredentials(t *testing.T) {
	s := basicServer(t)
	repo := s.newRepo(t, "private")
	commit := repo.CommitFiles(t, map[string]string{"secret.nix": "{ }"}, "private")
	c := newCache(t, Options{MinInterval: time.Hour})
	owner := openRepo(t, c, repo.URL(), s.secret)
	if got := resolve(t, owner, commit); got != commit {
		t.Fatalf("Resolve with the token = %s, want %s", got, commit)
	}
	tree(t, owner, commit)

	for name, secret := range map[string]map[string][]byte{
		"anonymous": nil,
		"wrong":     {"username": []byte("fleet"), "password": []byte("not-the-password")},
	} {
		other := openRepo(t, c, repo.URL(), secret)
		if other.ID() == owner.ID() {
			t.Fatalf("%s: ID equals the token's Repo's ID", name)
		}
		_, err := other.Resolve(ctx(t), commit)
		wantErr(t, err, ErrAuth)
		_, err = other.Tree(ctx(t), commit)
		wantErr(t, err, ErrAuth)
	}
	if again := openRepo(t, c, repo.URL(), s.secret); again.ID() != owner.ID() {
		t.Fatalf("equal credentials got another ID")
	}
}

// TestIdleRepositoriesAreForgotten: a repository nobody looked up or read for
// IdleTimeout is dropped with its objects (in memory, or its directory under Dir),
// while one in use stays; looked up again it starts empty and fetches.
func TestIdleRepositoriesAreForgotten(t *testing.T) {
	for _, onDisk := range []bool{false, true} {
		srv := gittest.NewServer(t, gittest.Options{AllowSHA1InWant: true})
		old := srv.NewRepo(t, "old")
		oldCommit := old.CommitFiles(t, map[string]string{"v": "old"}, "old")
		live := srv.NewRepo(t, "live")
		liveCommit := live.CommitFiles(t, map[string]string{"v": "live"}, "live")
		opts := Options{IdleTimeout: time.Hour}
		if onDisk {
			opts.Dir = t.TempDir()
		}
		c := newCache(t, opts)
		now := time.Now()
		c.now = func() time.Time { return now }

		oldRepo := openRepo(t, c, old.URL(), nil)
		tree(t, oldRepo, oldCommit)
		liveRepo := openRepo(t, c, live.URL(), nil)
		tree(t, liveRepo, liveCommit)
		if onDisk {
			if _, err := os.Stat(oldRepo.dir); err != nil {
				t.Fatalf("on disk: no directory for the repository: %v", err)
			}
		}

		now = now.Add(40 * time.Minute)
		tree(t, liveRepo, liveCommit) // in use
		now = now.Add(30 * time.Minute)
		openRepo(t, c, live.URL(), nil) // a lookup sweeps

		if st := c.Stats(); st.Repos != 1 || st.Evicted != 1 {
			t.Fatalf("onDisk=%v: stats %+v, want the idle repository forgotten and the live one kept", onDisk, st)
		}
		if again := openRepo(t, c, live.URL(), nil); again != liveRepo || !again.Has(liveCommit) {
			t.Fatalf("onDisk=%v: the repository in use lost its entry or objects", onDisk)
		}
		if onDisk {
			if _, err := os.Stat(oldRepo.dir); !os.IsNotExist(err) {
				t.Fatalf("the idle repository's directory is still there (%v)", err)
			}
		}
		fetches := srv.Count(gittest.Fetch)
		back := openRepo(t, c, old.URL(), nil)
		if back == oldRepo || back.Has(oldCommit) {
			t.Fatalf("onDisk=%v: the forgotten repository came back with its objects", onDisk)
		}
		if got := string(tree(t, back, oldCommit)["v"].Content); got != "old" || srv.Count(gittest.Fetch) == fetches {
			t.Fatalf("onDisk=%v: tree after eviction %q, fetches %d -> %d", onDisk, got, fetches, srv.Count(gittest.Fetch))
		}
	}
}
