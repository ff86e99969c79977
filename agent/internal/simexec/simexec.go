// Package simexec is a simulated nixos.Executor for benchmarks and tests of the
// agent's protocol at fleet scale: it runs no Nix and touches no system profile. A
// build waits a configurable time and yields a store path derived from the source
// tree's content, so a changed commit yields a new system and an unchanged one the
// same; profile generations and the running system are kept in memory.
//
// Only the bench-only binary nio-fleet-sim uses it: nio-agent has no flag that
// selects it, so a production agent can never run the simulation by accident.
package simexec

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/homystack/nio/agent/internal/nixos"
)

// Options shape the simulation.
type Options struct {
	// BuildTime is how long every Build takes (the stand-in for nix build).
	BuildTime time.Duration
	// ActivateTime is how long every Activate takes (switch-to-configuration).
	ActivateTime time.Duration
}

// Executor is the simulated executor; the zero value is not usable, call New.
type Executor struct {
	opts Options

	mu      sync.Mutex
	gens    []string // gens[i] is the store path of generation i+1
	current int      // current profile generation, 0 when there is none
	running string   // store path of the activated system
	booted  string   // store path of the first activated system

	builds, activations int
	ended               map[string]error // activation unit → its result
}

var _ nixos.Executor = (*Executor)(nil)

// New returns a simulated executor with no generations and no running system.
func New(opts Options) *Executor { return &Executor{opts: opts} }

// Build waits BuildTime (or until ctx ends) and returns a store path named after
// the attribute and the hash of every file under t.FlakeDir (or t.ModuleFile).
func (e *Executor) Build(ctx context.Context, t nixos.Target, outLink string, log nixos.LineFunc) (string, error) {
	root := t.FlakeDir
	if t.ModuleFile != "" {
		root = t.ModuleFile
	}
	digest, err := treeDigest(root)
	if err != nil {
		return "", fmt.Errorf("simulated build of %s: %w", root, err)
	}
	name := t.Attr
	if name == "" {
		name = "module"
	}
	log(nixos.Agent, "simexec: simulated build of "+name+" ("+e.opts.BuildTime.String()+"), no Nix involved")
	if err := sleep(ctx, e.opts.BuildTime); err != nil {
		return "", fmt.Errorf("simulated build: %w", err)
	}
	out := "/nix/store/" + digest[:32] + "-nixos-system-" + name + "-sim"
	log(nixos.Stdout, "simexec: built "+out)
	e.mu.Lock()
	e.builds++
	e.mu.Unlock()
	return out, nil
}

// SetProfile adds storePath as the profile's next generation.
func (e *Executor) SetProfile(_ context.Context, storePath string, log nixos.LineFunc) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.gens = append(e.gens[:e.current], storePath)
	e.current = len(e.gens)
	log(nixos.Agent, fmt.Sprintf("simexec: profile generation %d is %s", e.current, storePath))
	return nil
}

// SwitchGeneration points the profile back at gen.
func (e *Executor) SwitchGeneration(_ context.Context, gen int64, log nixos.LineFunc) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if gen < 1 || int(gen) > len(e.gens) {
		return fmt.Errorf("simexec: no generation %d (have %d)", gen, len(e.gens))
	}
	e.current = int(gen)
	log(nixos.Agent, fmt.Sprintf("simexec: profile back at generation %d", gen))
	return nil
}

// Generations lists the simulated profile's generations.
func (e *Executor) Generations() ([]nixos.Generation, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	gens := make([]nixos.Generation, len(e.gens))
	for i, p := range e.gens {
		gens[i] = nixos.Generation{Number: int64(i + 1), System: p}
	}
	return gens, nil
}

// Activate waits ActivateTime and makes storePath the running system for switch and
// test (boot and dry-activate leave it).
func (e *Executor) Activate(ctx context.Context, storePath, action string, a nixos.Activation, log nixos.LineFunc) error {
	err := e.activate(ctx, storePath, action, log)
	e.mu.Lock()
	if e.ended == nil {
		e.ended = map[string]error{}
	}
	e.ended[a.Unit] = err
	e.mu.Unlock()
	return err
}

// WaitActivation reports how an activation of this process ended: simulated
// activations do not outlive the simulator.
func (e *Executor) WaitActivation(_ context.Context, a nixos.Activation, _ nixos.LineFunc) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	err, ok := e.ended[a.Unit]
	if !ok {
		return fmt.Errorf("simexec: no activation %q", a.Unit)
	}
	return err
}

func (e *Executor) activate(ctx context.Context, storePath, action string, log nixos.LineFunc) error {
	if err := sleep(ctx, e.opts.ActivateTime); err != nil {
		return fmt.Errorf("simulated activation: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch action {
	case "switch", "test":
		e.running = storePath
		if e.booted == "" {
			e.booted = storePath
		}
	case "boot", "dry-activate":
	default:
		return fmt.Errorf("simexec: unknown activation %q", action)
	}
	e.activations++
	log(nixos.Stdout, "simexec: "+action+" "+storePath)
	return nil
}

// Generation is the profile's current generation.
func (e *Executor) Generation() (int64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return int64(e.current), nil
}

// CurrentSystem is the last system activated with switch or test.
func (e *Executor) CurrentSystem() (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.running, nil
}

// BootedSystem is the first system ever activated (the simulation never reboots).
func (e *Executor) BootedSystem() (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.booted, nil
}

// Counts reports how many builds and activations completed.
func (e *Executor) Counts() (builds, activations int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.builds, e.activations
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// treeDigest hashes the relative paths and contents of the regular files under root
// (or root itself when it is a file), in a fixed order.
func treeDigest(root string) (string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	sort.Strings(files)
	h := sha256.New()
	for _, p := range files {
		rel, _ := filepath.Rel(root, p)
		fmt.Fprintf(h, "%q\n", filepath.ToSlash(rel))
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
