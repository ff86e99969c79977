package source

import (
	"testing"
	"time"

	"github.com/homystack/nio/testkit/gittest"
)

// TestResolveWithinSharesOneListingPerIntervalAndTellsOfChanges: configurations
// polling every interval share one listing per interval (not one per MinInterval); a
// ref missing from an older listing is listed again at once (a branch pushed since);
// a listing that finds the refs changed says so once, with the repository's URL — a
// listing asked for by Invalidate (the webhook queues the repository's users itself)
// or the first one does not.
func TestResolveWithinSharesOneListingPerIntervalAndTellsOfChanges(t *testing.T) {
	srv := gittest.NewServer(t, gittest.Options{})
	repo := srv.NewRepo(t, "fleet")
	first := repo.CommitFiles(t, map[string]string{"a": "1"}, "one")
	c := newCache(t, Options{})
	changed := make(chan string, 10)
	c.OnRefsChanged(func(url string) { changed <- url })
	r := openRepo(t, c, repo.URL(), nil)
	within := func(ref string, maxAge time.Duration) string {
		t.Helper()
		commit, err := r.ResolveWithin(ctx(t), ref, maxAge)
		if err != nil {
			t.Fatalf("ResolveWithin %s: %v", ref, err)
		}
		return commit
	}

	for range 5 {
		if got := within("main", time.Hour); got != first {
			t.Fatalf("main = %s, want %s", got, first)
		}
	}
	if n := srv.Count(gittest.LsRemote); n != 1 {
		t.Fatalf("5 resolves within the interval made %d ls-remotes, want 1", n)
	}
	// A branch pushed after the listing: not in it, so listed again.
	repo.SetBranch(t, "staging", first)
	if got := within("staging", time.Hour); got != first {
		t.Fatalf("staging = %s, want %s", got, first)
	}
	if n := srv.Count(gittest.LsRemote); n != 2 {
		t.Fatalf("ls-remotes = %d, want 2 (the missing ref listed again)", n)
	}
	select {
	case url := <-changed:
		if url != repo.URL() {
			t.Fatalf("changed %q, want %q", url, repo.URL())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a listing with a new branch did not tell of the change")
	}

	// Without a change, a new listing tells nothing.
	if within("main", 0); srv.Count(gittest.LsRemote) != 3 {
		t.Fatalf("ls-remotes = %d, want 3", srv.Count(gittest.LsRemote))
	}
	second := repo.CommitFiles(t, map[string]string{"a": "2"}, "two")
	if got := within("main", time.Hour); got != first {
		t.Fatalf("within the interval main = %s, want the listed %s", got, first)
	}
	if got := within("main", 0); got != second {
		t.Fatalf("main = %s, want %s", got, second)
	}
	select {
	case url := <-changed:
		if url != repo.URL() {
			t.Fatalf("changed %q", url)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a listing with a new commit did not tell of the change")
	}

	// After Invalidate (a push webhook), a changed listing tells nothing.
	repo.CommitFiles(t, map[string]string{"a": "3"}, "three")
	r.Invalidate()
	within("main", time.Hour)
	select {
	case url := <-changed:
		t.Fatalf("a listing after Invalidate told of a change (%s)", url)
	case <-time.After(500 * time.Millisecond):
	}
	if len(changed) != 0 {
		t.Fatalf("%d more change notices", len(changed))
	}
}
