package controller

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/homystack/nio/operator/internal/source"
	"github.com/homystack/nio/testkit/gittest"
)

// TestSharedRenderSurvivesTheFirstCallerGivingUp: two passes wait for one render;
// the one that started it is cancelled mid-fetch. It returns at once, and the other
// still gets the archive (the render is not run with the first caller's context).
func TestSharedRenderSurvivesTheFirstCallerGivingUp(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv := gittest.NewServer(t, gittest.Options{BeforeRequest: func(kind gittest.Kind, _ *http.Request) {
		if kind == gittest.Fetch {
			once.Do(func() { close(arrived) })
			<-release
		}
	}})
	repo := srv.NewRepo(t, "fleet")
	commit := repo.CommitFiles(t, map[string]string{"flake.nix": "{ }"}, "init")
	cache, err := source.NewCache(source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := &Sources{Cache: cache}
	r, err := s.Repo(repo.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}

	firstCtx, cancelFirst := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { _, err := s.Render(firstCtx, r, commit, nil, nil); first <- err }()
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the render's fetch never reached the server")
	}
	second := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a, err := s.Render(ctx, r, commit, nil, nil)
		if err == nil && a.Digest == "" {
			err = errors.New("empty archive")
		}
		second <- err
	}()
	time.Sleep(200 * time.Millisecond) // the second caller joins the render in flight

	cancelFirst()
	select {
	case err := <-first:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled caller: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the cancelled caller still waits for the shared render")
	}
	close(release)
	select {
	case err := <-second:
		if err != nil {
			t.Fatalf("the caller that kept waiting got %v, want the archive", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the shared render never finished")
	}
}
